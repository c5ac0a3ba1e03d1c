//go:build go1.24

package quietlock_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

// ended returns a cancelled context and one whose deadline has passed.
func ended(t *testing.T) map[error]context.Context {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	t.Cleanup(cancel2)
	return map[error]context.Context{context.Canceled: cancelled, context.DeadlineExceeded: expired}
}

// Every method that takes a context returns the context's error itself once
// it has ended, as etcd's do: code that compares with == keeps working.
func TestContextErrorsAreBare(t *testing.T) {
	c := quietlocktest.New(t)
	s := quietlocktest.NewSession(t, c.Client, ttl)
	m := lock.NewMutex(s, "/bare/lock")
	e := elect.NewElection(s, "/bare/election")
	lockOrFatal(t, m)
	if err := e.Campaign(t.Context(), "v"); err != nil {
		t.Fatal(err)
	}
	other := lock.NewMutex(quietlocktest.NewSession(t, c.Client, ttl), "/bare/other")
	for want, ctx := range ended(t) {
		for name, call := range map[string]func() error{
			"Mutex.Lock":        func() error { return other.Lock(ctx) },
			"Mutex.TryLock":     func() error { return other.TryLock(ctx) },
			"Mutex.Unlock":      func() error { return m.Unlock(ctx) },
			"Election.Campaign": func() error { return elect.NewElection(s, "/bare/e2").Campaign(ctx, "v") },
			"Election.Proclaim": func() error { return e.Proclaim(ctx, "w") },
			"Election.Resign":   func() error { return e.Resign(ctx) },
			"Election.Leader":   func() error { _, err := e.Leader(ctx); return err },
		} {
			if err := call(); err != want {
				t.Errorf("%s with %v: got %v, want %v itself", name, want, err, want)
			}
		}
	}
	// A failed Unlock or Resign left the hold as it was.
	if m.Key() == "" || m.Rev() == 0 || e.Rev() == 0 {
		t.Errorf("after failed calls: Mutex key %q rev %d, Election rev %d", m.Key(), m.Rev(), e.Rev())
	}
	unlockOrFatal(t, m)
	if err := e.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := m.Unlock(t.Context()); err != concurrency.ErrLockReleased {
		t.Errorf("Unlock without a hold: got %v, want concurrency.ErrLockReleased itself", err)
	}
}

// Key returns what etcd's Key returns in every state, so that a transaction
// built from Key and IsOwner, as etcd's own Unlock does, is a harmless no-op
// once the lock is no longer held.
func TestKeyMirrorsEtcd(t *testing.T) {
	c := quietlocktest.New(t)
	ours := lock.NewMutex(quietlocktest.NewSession(t, c.Client, ttl), "/key/ours")
	theirs := concurrency.NewMutex(quietlocktest.NewSession(t, c.Client, ttl), "/key/theirs")
	holdOurs := lock.NewMutex(quietlocktest.NewSession(t, c.Client, ttl), "/key/ours")
	holdTheirs := concurrency.NewMutex(quietlocktest.NewSession(t, c.Client, ttl), "/key/theirs")
	ctx := t.Context()
	check := func(state string) {
		t.Helper()
		if got, want := ours.Key(), theirs.Key(); got != want && !(want != "" && want != "\x00" && got != "" && got != "\x00") {
			t.Errorf("%s: Key() = %q, etcd's = %q", state, got, want)
		}
	}
	check("before any attempt")

	lockOrFatal(t, holdOurs)
	if err := holdTheirs.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ours.TryLock(ctx); err != concurrency.ErrLocked {
		t.Fatalf("TryLock: %v", err)
	}
	if err := theirs.TryLock(ctx); err != concurrency.ErrLocked {
		t.Fatalf("etcd's TryLock: %v", err)
	}
	check("after a failed TryLock")
	noop := func(state string) {
		t.Helper()
		resp, err := c.Client.Txn(ctx).If(ours.IsOwner()).Then(clientv3.OpDelete(ours.Key())).Commit()
		if err != nil || resp.Succeeded {
			t.Errorf("%s: Txn(If(IsOwner()).Then(OpDelete(Key()))): succeeded %v, err %v; want a no-op", state, resp != nil && resp.Succeeded, err)
		}
	}
	noop("after a failed TryLock")

	unlockOrFatal(t, holdOurs)
	if err := holdTheirs.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	lockOrFatal(t, ours)
	if err := theirs.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	check("while held")
	unlockOrFatal(t, ours)
	if err := theirs.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	check("after Unlock")
	noop("after Unlock")
	if keys := c.Keys("/key/"); len(keys) != 0 {
		t.Errorf("keys left: %q", keys)
	}
}

// Unlock racing a delete of the key by someone else: the hold ends with
// ErrKeyDeleted, the reason the docs promise, however the watcher and
// Unlock interleave.
func TestUnlockAfterExternalDelete(t *testing.T) {
	c := quietlocktest.New(t)
	m := lock.NewMutex(quietlocktest.NewSession(t, c.Client, ttl), "/race")
	for i := range 30 {
		lockOrFatal(t, m)
		done := m.Done() // starts the hold's watcher
		if _, err := c.Client.Delete(t.Context(), m.Key()); err != nil {
			t.Fatal(err)
		}
		unlockOrFatal(t, m)
		<-done
		if err := m.Err(); !errors.Is(err, lock.ErrKeyDeleted) {
			t.Fatalf("round %d: Err() = %v, want %v", i, err, lock.ErrKeyDeleted)
		}
	}
}

// A Lock or TryLock whose context ends after it has read that the lock is
// free, and before it claims, sends no claim: the context is cancelled by
// the client as the read's answer arrives, before the caller sees it.
func TestCancelledLockDoesNotWrite(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/cancelled"
	var (
		mu     sync.Mutex
		cancel context.CancelFunc // cancels the call in progress after its read
		writes atomic.Int64
	)
	cli := quietlocktest.NewInterceptedClient(t, c.Endpoint, func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/etcdserverpb.KV/Txn" {
			writes.Add(1)
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		if method == "/etcdserverpb.KV/Range" {
			mu.Lock()
			if cancel != nil {
				cancel()
			}
			mu.Unlock()
		}
		return err
	})
	m := lock.NewMutex(quietlocktest.NewSession(t, cli, ttl), pfx)
	for name, call := range map[string]func(context.Context) error{"Lock": m.Lock, "TryLock": m.TryLock} {
		before := c.Stats()
		ctx, cancelCall := context.WithCancel(t.Context())
		mu.Lock()
		cancel = cancelCall
		mu.Unlock()
		if err := call(ctx); err != context.Canceled {
			t.Errorf("%s: got %v, want context.Canceled", name, err)
		}
		mu.Lock()
		cancel = nil
		mu.Unlock()
		if n := writes.Swap(0); n != 0 {
			t.Errorf("%s: sent %d writes after its context ended", name, n)
		}
		if got := c.Stats(); got.Revision != before.Revision || got.RaftIndex != before.RaftIndex {
			t.Errorf("%s: revision %d -> %d, raft index %d -> %d", name, before.Revision, got.Revision, before.RaftIndex, got.RaftIndex)
		}
	}
	if keys := c.Keys(pfx + "/"); len(keys) != 0 {
		t.Errorf("keys left: %q", keys)
	}
}

// ResumeElection takes back a leadership that a session holds.
func TestResumeElection(t *testing.T) {
	c := quietlocktest.New(t)
	s := quietlocktest.NewSession(t, c.Client, ttl)
	const pfx = "/resume"
	e := elect.NewElection(s, pfx)
	if err := e.Campaign(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	r := elect.ResumeElection(s, pfx, e.Key(), e.Rev())
	if r.Key() != e.Key() || r.Rev() != e.Rev() {
		t.Errorf("resumed: key %q rev %d, want %q %d", r.Key(), r.Rev(), e.Key(), e.Rev())
	}
	if err := r.Proclaim(t.Context(), "b"); err != nil {
		t.Fatal(err)
	}
	resp, err := r.Leader(t.Context())
	if err != nil || string(resp.Kvs[0].Value) != "b" {
		t.Fatalf("Leader after Proclaim: %v %v", resp, err)
	}
	// A stale resumption (the revision of an earlier term) is fenced.
	stale := elect.ResumeElection(s, pfx, e.Key(), e.Rev()-1)
	if err := stale.Proclaim(t.Context(), "c"); err != concurrency.ErrElectionNotLeader {
		t.Errorf("stale Proclaim: got %v, want ErrElectionNotLeader", err)
	}
	if err := r.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Leader(t.Context()); err != concurrency.ErrElectionNoLeader {
		t.Errorf("Leader after Resign: %v", err)
	}
	for _, bad := range []struct {
		key string
		rev int64
	}{{"/elsewhere/1", 5}, {pfx + "/", 5}, {pfx + "x/1", 5}, {pfx + "/1", 0}} {
		b := elect.ResumeElection(s, pfx, bad.key, bad.rev)
		if err := b.Resign(t.Context()); !errors.Is(err, elect.ErrBadLeaderKey) {
			t.Errorf("ResumeElection(%q, %d).Resign: got %v, want ErrBadLeaderKey", bad.key, bad.rev, err)
		}
	}
	if keys := c.Keys(pfx); len(keys) != 0 {
		t.Errorf("keys left: %q", keys)
	}
}

// A call whose claim gets no answer returns within about a second of its
// context's deadline (acquire.MaxOverrun), not after the claim's and the
// cleanup's own timeouts. The claim is cut off by a black-holed proxy right
// after the call's read.
func TestOverrunIsBounded(t *testing.T) {
	c := quietlocktest.New(t)
	p := quietlocktest.NewProxy(t, c.Endpoint)
	var armed atomic.Bool
	cli := quietlocktest.NewInterceptedClient(t, p.Endpoint(), func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if method == "/etcdserverpb.KV/Range" && armed.Swap(false) {
			p.Blackhole()
		}
		return err
	})
	s := quietlocktest.NewSession(t, cli, ttl)
	for name, call := range map[string]func(context.Context) error{
		"Mutex.TryLock":     lock.NewMutex(s, "/overrun/lock").TryLock,
		"Election.Campaign": func(ctx context.Context) error { return elect.NewElection(s, "/overrun/election").Campaign(ctx, "v") },
	} {
		const timeout = 500 * time.Millisecond
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		armed.Store(true)
		start := time.Now()
		err := call(ctx)
		took := time.Since(start)
		cancel()
		p.Heal()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: got %v, want context.DeadlineExceeded", name, err)
		}
		// The bound is a second past the deadline; the margin is for a
		// loaded machine. Before it was bounded, such a call took 10 s.
		if limit := timeout + time.Second + 1500*time.Millisecond; took > limit {
			t.Errorf("%s returned %v after it started, more than %v", name, took, limit)
		}
	}
}
