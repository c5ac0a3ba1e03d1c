//go:build go1.24

package quietlock_test

import (
	"context"
	"fmt"
	"testing"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/internal/watchwait"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

// handovers is how many times the lock changes hands in the fairness tests
// while etcd-style waiters keep joining; a quietlock waiter must get it long
// before the end.
const handovers = 10

// A quietlock waiter beside etcd's queued waiters, which join one after
// another, each while the lock is held: the quietlock waiter takes its
// place in their queue when it sees it, and so gets the lock by the second
// handover, as etcd's first-come-first-served order gives it. Before, every
// handover went to the etcd waiter that had queued last.
func TestFairnessBesideEtcdMutex(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/fair/mutex"
	holder := concurrency.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	if err := holder.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	q := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	got := make(chan error, 1)
	go func() { got <- q.Lock(t.Context()) }()
	quietlocktest.WaitFor(t, "the quietlock waiter to wait", func() bool { return watchwait.Waiters() == 1 })

	// release is how the current holder lets go: etcd waiters unlock their
	// Mutex.
	release := func() error { return holder.Unlock(context.Background()) }
	for h := 1; h <= handovers; h++ {
		// The next etcd waiter queues while the lock is held...
		e := concurrency.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
		locked := make(chan error, 1)
		go func() { locked <- e.Lock(t.Context()) }()
		quietlocktest.WaitFor(t, "the etcd waiter to queue", func() bool { return len(c.Keys(pfx+"/")) >= 2 })
		// ... then the holder lets go.
		if err := release(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("the quietlock waiter got the lock at handover %d", h)
			if h > 2 {
				t.Errorf("the quietlock waiter got the lock at handover %d, want at most 2", h)
			}
			unlockOrFatal(t, q)
			// The etcd waiters queued behind it get it in turn.
			if err := <-locked; err != nil {
				t.Fatal(err)
			}
			if err := e.Unlock(t.Context()); err != nil {
				t.Fatal(err)
			}
			if keys := c.Keys(pfx + "/"); len(keys) != 0 {
				t.Errorf("keys left: %q", keys)
			}
			return
		case err := <-locked:
			if err != nil {
				t.Fatal(err)
			}
			// The etcd waiter got it: it is the holder now.
			release = func() error { return e.Unlock(context.Background()) }
		}
	}
	t.Fatalf("the quietlock waiter was overtaken %d times in a row", handovers)
}

// The same beside the real `etcdctl lock` (Debian's etcdctl 3.4), each
// holding the lock until interrupted.
func TestFairnessBesideEtcdctlLock(t *testing.T) {
	c := interopCluster(t)
	const name = "/fair/etcdctl"
	first := startEtcdctl(t, c.Endpoint, "lock", name)
	first.await(t, name+"/")
	q := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), name)
	got := make(chan error, 1)
	go func() { got <- q.Lock(t.Context()) }()
	quietlocktest.WaitFor(t, "the quietlock waiter to wait", func() bool { return watchwait.Waiters() == 1 })

	holder := first
	for h := 1; h <= handovers; h++ {
		next := startEtcdctl(t, c.Endpoint, "lock", name)
		quietlocktest.WaitFor(t, fmt.Sprintf("etcdctl %d to queue", h), func() bool { return len(c.Keys(name+"/")) >= 2 })
		holder.interrupt(t)
		acquired := make(chan struct{})
		go func() {
			for l := range next.lines {
				if len(l) > len(name) && l[:len(name)+1] == name+"/" {
					close(acquired)
					return
				}
			}
		}()
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("the quietlock waiter got the lock at handover %d", h)
			if h > 2 {
				t.Errorf("the quietlock waiter got the lock at handover %d, want at most 2", h)
			}
			unlockOrFatal(t, q)
			<-acquired
			next.interrupt(t)
			if keys := c.Keys(name + "/"); len(keys) != 0 {
				t.Errorf("keys left: %q", keys)
			}
			return
		case <-acquired:
			holder = next
		}
	}
	t.Fatalf("the quietlock waiter was overtaken %d times in a row", handovers)
}
