// Package negatives has TryLock calls that must not be reported.
package negatives

import (
	"context"
	"time"

	"github.com/quietlock/quietlock/lock"
	"go.etcd.io/etcd/client/v3/concurrency"
)

func once(ctx context.Context, m *concurrency.Mutex) error {
	return m.TryLock(ctx)
}

func thenLock(ctx context.Context, m *concurrency.Mutex) error {
	if err := m.TryLock(ctx); err == concurrency.ErrLocked {
		return m.Lock(ctx)
	} else if err != nil {
		return err
	}
	return nil
}

// Mutex is another type named Mutex with a TryLock method.
type Mutex struct{}

// TryLock does nothing.
func (*Mutex) TryLock(context.Context) error { return nil }

func otherMutex(ctx context.Context, m *Mutex) {
	for m.TryLock(ctx) != nil {
		time.Sleep(time.Second)
	}
}

// quietlock's TryLock writes nothing when it fails: polling it is fine.
func quietlock(ctx context.Context, m *lock.Mutex) {
	for m.TryLock(ctx) != nil {
		time.Sleep(time.Second)
	}
}

type locker interface{ TryLock(context.Context) error }

// Interface calls are not followed.
func viaInterface(ctx context.Context, l locker) {
	for l.TryLock(ctx) != nil {
		time.Sleep(time.Second)
	}
}

func breakAtEnd(ctx context.Context, m *concurrency.Mutex) {
	for {
		if m.TryLock(ctx) != nil {
			m.Lock(ctx)
		}
		break
	}
}

func returnAtEnd(ctx context.Context, ms []*concurrency.Mutex) error {
	for _, m := range ms {
		return m.TryLock(ctx)
	}
	return nil
}

// continueInner continues an inner loop only: the outer one still runs once.
func continueInner(ctx context.Context, m *concurrency.Mutex, keys []string) {
	for m.TryLock(ctx) != nil {
		for range keys {
			continue
		}
		break
	}
}

func tryOnce(ctx context.Context, m *concurrency.Mutex) error { return m.TryLock(ctx) }

func helperOutsideLoop(ctx context.Context, m *concurrency.Mutex) error {
	if err := tryOnce(ctx, m); err != concurrency.ErrLocked {
		return err
	}
	return m.Lock(ctx)
}

// A literal in a loop that is only stored is not called there.
func stored(ctx context.Context, m *concurrency.Mutex) []func() error {
	var fs []func() error
	for range 3 {
		fs = append(fs, func() error { return m.TryLock(ctx) })
	}
	return fs
}

// A variable bound to two literals is not followed.
func rebound(ctx context.Context, m *concurrency.Mutex, quiet bool) {
	f := func() { m.TryLock(ctx) }
	if quiet {
		f = func() {}
	}
	for range 3 {
		f()
	}
}

// ignore does not call its argument.
func ignore(f func()) {}

func notCalled(ctx context.Context, m *concurrency.Mutex) {
	for range 3 {
		ignore(func() { m.TryLock(ctx) })
	}
}

// callOnce calls f once; a loop elsewhere calls it with something else.
func callOnce(f func()) { f() }

func noop() {}

func contextInsensitive(ctx context.Context, m *concurrency.Mutex) {
	callOnce(func() { m.TryLock(ctx) })
	for range 3 {
		callOnce(noop)
	}
}

// deferred calls the literal once, when the function returns.
func deferred(ctx context.Context, m *concurrency.Mutex) {
	defer func() { m.TryLock(ctx) }()
}
