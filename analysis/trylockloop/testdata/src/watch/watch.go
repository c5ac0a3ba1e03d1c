// Package watch calls etcd's TryLock on every event of a watch.
package watch

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

func rangeWatch(ctx context.Context, cli *clientv3.Client, m *concurrency.Mutex, pfx string) {
	for range cli.Watch(ctx, pfx, clientv3.WithPrefix()) {
		if m.TryLock(ctx) == nil { // want `^concurrency\.Mutex\.TryLock on every etcd watch event: each failed TryLock's put and delete wake every other watcher, which try again: a write storm; use Mutex\.Lock \(which waits on a watch\) or github\.com/quietlock/quietlock/lock\.Mutex \(whose failed TryLock writes nothing\)$`
			return
		}
	}
}

func selectWatch(ctx context.Context, cli *clientv3.Client, m *concurrency.Mutex, pfx string) error {
	wch := cli.Watch(ctx, pfx, clientv3.WithPrefix())
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case resp, ok := <-wch:
			_ = resp
			if !ok {
				return nil
			}
			if err := m.TryLock(ctx); err != concurrency.ErrLocked { // want `TryLock on every etcd watch event`
				return err
			}
		}
	}
}

// receive uses a plain channel of watch responses, not the named type.
func receive(ctx context.Context, wch <-chan clientv3.WatchResponse, m *concurrency.Mutex) {
	for {
		<-wch
		m.TryLock(ctx) // want `TryLock on every etcd watch event`
	}
}

// nested wins the watch message over the inner loop.
func nested(ctx context.Context, wch clientv3.WatchChan, ms []*concurrency.Mutex) {
	for range wch {
		for _, m := range ms {
			m.TryLock(ctx) // want `TryLock on every etcd watch event`
		}
	}
}
