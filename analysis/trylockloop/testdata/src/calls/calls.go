// Package calls calls etcd's TryLock in functions that loops call.
package calls

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

func tryAcquire(ctx context.Context, m *concurrency.Mutex) bool {
	return m.TryLock(ctx) == nil // want `^concurrency\.Mutex\.TryLock called in a loop at calls\.go:17 via tryAcquire: each failed TryLock writes 2 revisions`
}

func helper(ctx context.Context, m *concurrency.Mutex) {
	for !tryAcquire(ctx, m) {
		time.Sleep(time.Second)
	}
}

// Transitively, through another function.
func inner(ctx context.Context, m *concurrency.Mutex) error {
	return m.TryLock(ctx) // want `called in a loop at calls\.go:30 via outer`
}

func outer(ctx context.Context, m *concurrency.Mutex) error { return inner(ctx, m) }

func transitive(ctx context.Context, m *concurrency.Mutex) {
	for outer(ctx, m) != nil {
		time.Sleep(time.Second)
	}
}

func closure(ctx context.Context, m *concurrency.Mutex) {
	acquire := func() error {
		return m.TryLock(ctx) // want `called in a loop at calls\.go:39 via acquire`
	}
	for {
		if acquire() == nil {
			return
		}
		time.Sleep(time.Second)
	}
}

func declaredClosure(ctx context.Context, m *concurrency.Mutex) {
	var acquire func() error
	acquire = func() error {
		return m.TryLock(ctx) // want `called in a loop at calls\.go:52 via acquire`
	}
	for acquire() != nil {
		time.Sleep(time.Second)
	}
}

func immediate(ctx context.Context, m *concurrency.Mutex) {
	for {
		func() {
			m.TryLock(ctx) // want `TryLock called in a loop at calls\.go:58 via a function literal`
		}()
		time.Sleep(time.Second)
	}
}

func goroutine(ctx context.Context, m *concurrency.Mutex) {
	for range time.Tick(time.Second) {
		go func() {
			m.TryLock(ctx) // want `called in a loop at calls\.go:67 via a function literal`
		}()
	}
}

type standby struct {
	m *concurrency.Mutex
}

func (s *standby) acquire(ctx context.Context) error {
	return s.m.TryLock(ctx) // want `called in a loop at calls\.go:83 via standby\.acquire`
}

func (s *standby) run(ctx context.Context) {
	for s.acquire(ctx) != nil {
		time.Sleep(time.Second)
	}
}

// retry is a hand-written retry helper: it calls op in a loop.
func retry(ctx context.Context, op func() error) error {
	for {
		if err := op(); err == nil {
			return nil
		}
		time.Sleep(time.Second)
	}
}

func passedLiteral(ctx context.Context, m *concurrency.Mutex) error {
	return retry(ctx, func() error {
		return m.TryLock(ctx) // want `called in a loop at calls\.go:90 via retry`
	})
}

func tryOnce(m *concurrency.Mutex) error {
	return m.TryLock(context.Background()) // want `called in a loop at calls\.go:90 via retry`
}

func passedFunc(ctx context.Context, m *concurrency.Mutex) error {
	return retry(ctx, func() error { return tryOnce(m) })
}

// do calls f once; it is called in a loop with a closure that tries.
func do(f func()) { f() }

func passedInLoop(ctx context.Context, m *concurrency.Mutex) {
	for {
		do(func() {
			m.TryLock(ctx) // want `called in a loop at calls\.go:116 via do`
		})
		time.Sleep(time.Second)
	}
}

func watched(ctx context.Context, m *concurrency.Mutex) error {
	return m.TryLock(ctx) // want `^concurrency\.Mutex\.TryLock called on every etcd watch event at calls\.go:129 via watched: each failed TryLock's put and delete wake every other watcher`
}

func watchHelper(ctx context.Context, cli *clientv3.Client, m *concurrency.Mutex) {
	for range cli.Watch(ctx, "/lock", clientv3.WithPrefix()) {
		watched(ctx, m)
	}
}

func recursive(ctx context.Context, m *concurrency.Mutex) error {
	if err := m.TryLock(ctx); err != concurrency.ErrLocked { // want `called recursively at calls\.go:139 via recursive`
		return err
	}
	time.Sleep(time.Second)
	return recursive(ctx, m)
}

type generic[T any] struct{ m *concurrency.Mutex }

func (g *generic[T]) try(ctx context.Context) error {
	return g.m.TryLock(ctx) // want `called in a loop at calls\.go:149 via generic\.try`
}

func useGeneric(ctx context.Context, g *generic[int]) {
	for g.try(ctx) != nil {
	}
}
