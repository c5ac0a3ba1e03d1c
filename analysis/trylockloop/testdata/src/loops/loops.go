// Package loops calls etcd's TryLock in loops of every form.
package loops

import (
	"context"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

func sleep(ctx context.Context, m *concurrency.Mutex) {
	for {
		if err := m.TryLock(ctx); err == nil { // want `^concurrency\.Mutex\.TryLock in a loop: each failed TryLock writes 2 revisions and 2 raft entries, forever while the lock is held elsewhere; use Mutex\.Lock \(which waits on a watch\) or github\.com/quietlock/quietlock/lock\.Mutex \(whose failed TryLock writes nothing\)$`
			return
		}
		time.Sleep(time.Second)
	}
}

func ticker(ctx context.Context, m *concurrency.Mutex) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if m.TryLock(ctx) == nil { // want `TryLock in a loop`
				return
			}
		}
	}
}

func rangeTicker(ctx context.Context, m *concurrency.Mutex) {
	t := time.NewTicker(time.Second)
	for range t.C {
		if m.TryLock(ctx) == nil { // want `TryLock in a loop`
			break
		}
	}
}

func rangeTick(ctx context.Context, m *concurrency.Mutex) error {
	for range time.Tick(time.Second) {
		switch err := m.TryLock(ctx); err { // want `TryLock in a loop`
		case nil:
			return nil
		case concurrency.ErrLocked:
		default:
			return err
		}
	}
	return nil
}

func after(ctx context.Context, m *concurrency.Mutex) error {
	for {
		err := m.TryLock(ctx) // want `TryLock in a loop`
		if err != concurrency.ErrLocked {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
		}
	}
}

func backoff(ctx context.Context, m *concurrency.Mutex) error {
	delay := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		if err := m.TryLock(ctx); err != concurrency.ErrLocked { // want `TryLock in a loop`
			return err
		}
		time.Sleep(delay/2 + rand.N(delay))
		delay = min(2*delay, 30*time.Second)
	}
}

func busy(ctx context.Context, m *concurrency.Mutex) {
	for {
		m.TryLock(ctx) // want `TryLock in a loop`
	}
}

func cond(ctx context.Context, m *concurrency.Mutex) {
	for m.TryLock(ctx) != nil { // want `TryLock in a loop`
		time.Sleep(time.Second)
	}
}

func post(ctx context.Context, m *concurrency.Mutex) {
	for err := m.TryLock(ctx); err != nil; err = m.TryLock(ctx) { // want `TryLock in a loop`
		time.Sleep(time.Second)
	}
}

func threeClause(ctx context.Context, m *concurrency.Mutex) error {
	var err error
	for i := 0; i < 10; i++ {
		if err = m.TryLock(ctx); err == nil { // want `TryLock in a loop`
			return nil
		}
	}
	return err
}

func rangeInt(ctx context.Context, m *concurrency.Mutex) {
	for range 3 {
		_ = m.TryLock(ctx) // want `TryLock in a loop`
	}
}

// onceThenContinue breaks at the end but may continue before it.
func onceThenContinue(ctx context.Context, m *concurrency.Mutex) {
	for {
		if m.TryLock(ctx) != nil { // want `TryLock in a loop`
			time.Sleep(time.Second)
			continue
		}
		break
	}
}

// labeled continues the outer loop from an inner one.
func labeled(ctx context.Context, m *concurrency.Mutex, keys []string) {
outer:
	for {
		for range keys {
			if m.TryLock(ctx) != nil { // want `TryLock in a loop`
				continue outer
			}
		}
		return
	}
}

type embedded struct{ *concurrency.Mutex }

func promoted(ctx context.Context, e embedded) {
	for e.TryLock(ctx) != nil { // want `TryLock in a loop`
	}
}

func methodExpr(ctx context.Context, m *concurrency.Mutex) {
	for (*concurrency.Mutex).TryLock(m, ctx) != nil { // want `TryLock in a loop`
	}
}
