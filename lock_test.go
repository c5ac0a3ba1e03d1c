//go:build go1.24

package quietlock_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quietlock/quietlock/internal/watchwait"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// An embedded etcd can leave HTTP connections behind when closed
		// (measured with a three-member cluster only started and closed).
		// quietlock uses no net/http, and the tests' own /metrics scrapes
		// close their connections.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
	)
}

// ttl is the session TTL, in seconds, of tests that do not let sessions
// expire: long enough that no lease expires while a test runs.
const ttl = 30

// contender is one standby: its own client, with a request counter, and
// its own session.
type contender struct {
	cli  *clientv3.Client
	reqs *atomic.Int64
	s    *concurrency.Session
	m    *lock.Mutex
}

func newContenders(t *testing.T, c *quietlocktest.Etcd, n int, pfx string) []*contender {
	t.Helper()
	cs := make([]*contender, n)
	for i := range cs {
		cli, reqs := c.NewCountingClient()
		s := quietlocktest.NewSession(t, cli, ttl)
		cs[i] = &contender{cli: cli, reqs: reqs, s: s, m: lock.NewMutex(s, pfx)}
	}
	return cs
}

func mutexes(cs []*contender) []*lock.Mutex {
	ms := make([]*lock.Mutex, len(cs))
	for i, c := range cs {
		ms[i] = c.m
	}
	return ms
}

func requests(cs []*contender) []int64 {
	n := make([]int64, len(cs))
	for i, c := range cs {
		n[i] = c.reqs.Load()
	}
	return n
}

type outcome struct {
	i   int
	err error
}

// lockAll calls Lock on every mutex, each in its own goroutine. The Lock
// calls end when cancel is called or the test ends.
func lockAll(t *testing.T, ms []*lock.Mutex) (results <-chan outcome, cancel context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan outcome, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out <- outcome{i, m.Lock(ctx)}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return out, cancel
}

// waitingFor waits until n local waiters have joined a watch and the server
// serves want watchers.
func waitingFor(t *testing.T, c *quietlocktest.Etcd, n int, watchers int64) {
	t.Helper()
	quietlocktest.WaitFor(t, "waiters to settle", func() bool {
		return watchwait.Waiters() == n && c.Stats().Watchers == watchers
	})
}

func lockOrFatal(t *testing.T, m *lock.Mutex) {
	t.Helper()
	if err := m.Lock(t.Context()); err != nil {
		t.Fatalf("Lock: %v", err)
	}
}

func unlockOrFatal(t *testing.T, m *lock.Mutex) {
	t.Helper()
	if err := m.Unlock(t.Context()); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

func window(t *testing.T) time.Duration {
	if testing.Short() {
		return 2 * time.Second
	}
	return 10 * time.Second
}

// 1 holder + 16 standbys, each with its own client and session: while they
// wait, the store revision and the raft index do not move, no standby sends
// a single request (reads included), and only the holder's key exists.
func TestWaitingStandbysWriteNothing(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/idle"
	holder := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	lockOrFatal(t, holder)
	cs := newContenders(t, c, 16, pfx)
	base := c.Stats()

	results, _ := lockAll(t, mutexes(cs))
	waitingFor(t, c, 16, base.Watchers+16)
	before, reqs := c.Stats(), requests(cs)
	time.Sleep(window(t))
	after := c.Stats()

	if got, want := after.Revision-base.Revision, int64(0); got != want {
		t.Errorf("revisions while waiting: got %d, want %d", got, want)
	}
	if got, want := after.RaftIndex-base.RaftIndex, int64(0); got != want {
		t.Errorf("raft entries while waiting: got %d, want %d", got, want)
	}
	if got, want := after.Watchers, before.Watchers; got != want {
		t.Errorf("watchers: got %d, want %d", got, want)
	}
	if got := requests(cs); !slices.Equal(got, reqs) {
		t.Errorf("requests per standby while waiting: got %v, want %v", got, reqs)
	}
	if got, want := c.Keys(pfx+"/"), []string{holder.Key()}; !slices.Equal(got, want) {
		t.Errorf("keys: got %q, want %q", got, want)
	}
	select {
	case r := <-results:
		t.Fatalf("standby %d returned while the lock was held: %v", r.i, r.err)
	default:
	}
}

// A TryLock that finds the lock held writes nothing and sends one read.
func TestFailedTryLockWritesNothing(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/trylock"
	holder := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	lockOrFatal(t, holder)
	cs := newContenders(t, c, 1, pfx)
	base, reqs := c.Stats(), cs[0].reqs.Load()

	for i := range 100 {
		// == on purpose: drop-in users compare etcd's sentinel directly.
		if err := cs[0].m.TryLock(t.Context()); err != concurrency.ErrLocked {
			t.Fatalf("TryLock %d: got %v, want %v", i, err, concurrency.ErrLocked)
		}
	}
	after := c.Stats()
	if got := after.Revision - base.Revision; got != 0 {
		t.Errorf("revisions for 100 failed TryLocks: got %d, want 0", got)
	}
	if got := after.RaftIndex - base.RaftIndex; got != 0 {
		t.Errorf("raft entries for 100 failed TryLocks: got %d, want 0", got)
	}
	if got, want := cs[0].reqs.Load()-reqs, int64(100); got != want {
		t.Errorf("requests for 100 failed TryLocks: got %d, want %d", got, want)
	}
	if got, want := c.Keys(pfx+"/"), []string{holder.Key()}; !slices.Equal(got, want) {
		t.Errorf("keys: got %q, want %q", got, want)
	}
}

// A TryLock by the session that already holds the lock succeeds without
// writing; a winning TryLock writes exactly one revision.
func TestTryLockCosts(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/trylock-own"
	m := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	base := c.Stats()
	if err := m.TryLock(t.Context()); err != nil {
		t.Fatalf("TryLock on a free lock: %v", err)
	}
	won := c.Stats()
	if got := won.Revision - base.Revision; got != 1 {
		t.Errorf("revisions for a winning TryLock: got %d, want 1", got)
	}
	if got, want := m.Rev(), won.Revision; got != want {
		t.Errorf("Rev: got %d, want %d", got, want)
	}
	if err := m.TryLock(t.Context()); err != nil {
		t.Fatalf("TryLock while holding: %v", err)
	}
	if err := m.Lock(t.Context()); err != nil {
		t.Fatalf("Lock while holding: %v", err)
	}
	if got := c.Stats(); got.Revision != won.Revision || got.RaftIndex != won.RaftIndex {
		t.Errorf("TryLock and Lock while holding wrote: revision %d -> %d, raft index %d -> %d",
			won.Revision, got.Revision, won.RaftIndex, got.RaftIndex)
	}
	unlockOrFatal(t, m)
}

// Unlock hands over to exactly one standby, for 2 revisions in all: the
// holder's delete and the winner's put. The other standbys go back to
// waiting on the winner's key without writing.
func TestHandoverCostsTwoRevisions(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/handover"
	const n = 16
	holder := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	lockOrFatal(t, holder)
	cs := newContenders(t, c, n, pfx)
	w0 := c.Stats().Watchers
	results, _ := lockAll(t, mutexes(cs))
	waitingFor(t, c, n, w0+n)
	base := c.Stats()

	unlockOrFatal(t, holder)
	var r outcome
	select {
	case r = <-results:
	case <-t.Context().Done():
		t.Fatal("no standby acquired the lock")
	}
	if r.err != nil {
		t.Fatalf("standby %d: Lock: %v", r.i, r.err)
	}
	winner := cs[r.i].m
	// The losers wait again, now on the winner's key.
	waitingFor(t, c, n-1, w0+n-1)
	after := c.Stats()

	if got, want := after.Revision-base.Revision, int64(2); got != want {
		t.Errorf("revisions for the handover: got %d, want %d", got, want)
	}
	// One raft entry for the delete, one per client that attempted.
	if got := after.RaftIndex - base.RaftIndex; got < 2 || got > n+1 {
		t.Errorf("raft entries for the handover: got %d, want 2..%d", got, n+1)
	}
	t.Logf("handover with %d standbys: %d revisions, %d raft entries",
		n, after.Revision-base.Revision, after.RaftIndex-base.RaftIndex)
	select {
	case r := <-results:
		t.Fatalf("a second standby (%d) returned: %v", r.i, r.err)
	default:
	}
	if got, want := c.Keys(pfx+"/"), []string{winner.Key()}; !slices.Equal(got, want) {
		t.Errorf("keys: got %q, want %q", got, want)
	}
	if winner.Rev() != after.Revision {
		t.Errorf("winner's Rev: got %d, want %d", winner.Rev(), after.Revision)
	}
	unlockOrFatal(t, winner)
}

// Keys put and deleted under the prefix by anyone else wake nobody: the
// revision moves by exactly the foreign writes and no standby sends a
// request.
func TestForeignEventsCauseNoRequest(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/foreign"
	holder := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	lockOrFatal(t, holder)
	cs := newContenders(t, c, 4, pfx)
	w0 := c.Stats().Watchers
	results, _ := lockAll(t, mutexes(cs))
	waitingFor(t, c, 4, w0+4)
	base, reqs := c.Stats(), requests(cs)

	for range 5 {
		if _, err := c.Client.Put(t.Context(), pfx+"/foreign", "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Client.Delete(t.Context(), pfx+"/foreign"); err != nil {
			t.Fatal(err)
		}
	}
	// The standbys do not even receive these events; give a wrongly woken
	// one time to show itself.
	time.Sleep(time.Second)
	after := c.Stats()
	if got, want := after.Revision-base.Revision, int64(10); got != want {
		t.Errorf("revisions: got %d, want %d (the foreign writes only)", got, want)
	}
	if got, want := after.RaftIndex-base.RaftIndex, int64(10); got != want {
		t.Errorf("raft entries: got %d, want %d (the foreign writes only)", got, want)
	}
	if got := requests(cs); !slices.Equal(got, reqs) {
		t.Errorf("standby requests: got %v, want %v", got, reqs)
	}
	select {
	case r := <-results:
		t.Fatalf("standby %d returned: %v", r.i, r.err)
	default:
	}
}

// 500 waiters on one client on one lock share one server watcher on one
// gRPC watch stream; both go back to baseline when they leave. When the lock
// is released they attempt one at a time: the first claims, the others go
// back to waiting on what it saw, so the client sends exactly 1 request for
// the whole handover.
func TestWaitersShareOneWatch(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/shared"
	const n = 500
	holder := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	lockOrFatal(t, holder)
	cli, reqs := c.NewCountingClient()
	ms := make([]*lock.Mutex, n)
	for i := range ms {
		ms[i] = lock.NewMutex(quietlocktest.NewSession(t, cli, ttl), pfx)
	}
	base := c.Stats()

	results, cancel := lockAll(t, ms)
	waitingFor(t, c, n, base.Watchers+1)
	st := c.Stats()
	if got, want := st.WatchStreams, base.WatchStreams+1; got != want {
		t.Errorf("watch streams with %d waiters: got %d, want %d", n, got, want)
	}
	if st.Revision != base.Revision || st.RaftIndex != base.RaftIndex {
		t.Errorf("joining wrote: revision %d -> %d, raft index %d -> %d", base.Revision, st.Revision, base.RaftIndex, st.RaftIndex)
	}

	before := reqs.Load()
	unlockOrFatal(t, holder)
	r := <-results
	if r.err != nil {
		t.Fatalf("waiter %d: Lock: %v", r.i, r.err)
	}
	waitingFor(t, c, n-1, base.Watchers+1)
	if got, want := reqs.Load()-before, int64(1); got != want {
		t.Errorf("requests by the waiters' client for the handover: got %d, want %d", got, want)
	}
	if got, want := c.Keys(pfx+"/"), []string{ms[r.i].Key()}; !slices.Equal(got, want) {
		t.Errorf("keys: got %q, want %q", got, want)
	}

	cancel()
	for range n - 1 {
		if r := <-results; !errors.Is(r.err, context.Canceled) {
			t.Errorf("waiter %d: got %v, want %v", r.i, r.err, context.Canceled)
		}
	}
	unlockOrFatal(t, ms[r.i])
	quietlocktest.WaitFor(t, "watchers and streams back to baseline", func() bool {
		st := c.Stats()
		return st.Watchers == base.Watchers && st.WatchStreams == base.WatchStreams
	})
	if got := watchwait.Entries(); got != 0 {
		t.Errorf("watch entries left: %d", got)
	}
	if got := c.Keys(pfx + "/"); len(got) != 0 {
		t.Errorf("keys left: %q", got)
	}
}

// Our Mutex, etcd's concurrency.Mutex and etcd's queue exclude each other
// on one prefix, in both directions.
func TestInteropWithEtcdMutex(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/interop"
	ours := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	theirs := concurrency.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)

	t.Run("etcd holds, ours waits", func(t *testing.T) {
		if err := theirs.Lock(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := ours.TryLock(t.Context()); err != concurrency.ErrLocked {
			t.Fatalf("TryLock: got %v, want %v", err, concurrency.ErrLocked)
		}
		results, _ := lockAll(t, []*lock.Mutex{ours})
		quietlocktest.WaitFor(t, "our waiter", func() bool { return watchwait.Waiters() == 1 })
		if err := theirs.Unlock(t.Context()); err != nil {
			t.Fatal(err)
		}
		if r := <-results; r.err != nil {
			t.Fatalf("Lock: %v", r.err)
		}
		unlockOrFatal(t, ours)
	})

	t.Run("ours holds, etcd waits", func(t *testing.T) {
		lockOrFatal(t, ours)
		if err := theirs.TryLock(t.Context()); !errors.Is(err, concurrency.ErrLocked) {
			t.Fatalf("etcd TryLock: got %v, want %v", err, concurrency.ErrLocked)
		}
		done := make(chan error, 1)
		go func() { done <- theirs.Lock(t.Context()) }()
		// etcd's Lock queues a key of its own.
		quietlocktest.WaitFor(t, "etcd's queued key", func() bool { return len(c.Keys(pfx+"/")) == 2 })
		unlockOrFatal(t, ours)
		if err := <-done; err != nil {
			t.Fatalf("etcd Lock: %v", err)
		}
		if err := theirs.Unlock(t.Context()); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("etcd's queued waiter goes first", func(t *testing.T) {
		// A key queued by etcd's Mutex is next in line by create revision;
		// our waiter must wait for it too.
		third := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
		lockOrFatal(t, ours)
		done := make(chan error, 1)
		go func() { done <- theirs.Lock(t.Context()) }()
		quietlocktest.WaitFor(t, "etcd's queued key", func() bool { return len(c.Keys(pfx+"/")) == 2 })
		results, _ := lockAll(t, []*lock.Mutex{third})
		quietlocktest.WaitFor(t, "our waiter", func() bool { return watchwait.Waiters() == 1 })
		unlockOrFatal(t, ours)
		if err := <-done; err != nil {
			t.Fatalf("etcd Lock: %v", err)
		}
		// Ours is still waiting, now on etcd's key.
		quietlocktest.WaitFor(t, "our waiter on etcd's key", func() bool { return watchwait.Waiters() == 1 })
		select {
		case r := <-results:
			t.Fatalf("our Lock returned while etcd's Mutex held the lock: %v", r.err)
		default:
		}
		if err := theirs.Unlock(t.Context()); err != nil {
			t.Fatal(err)
		}
		if r := <-results; r.err != nil {
			t.Fatalf("Lock: %v", r.err)
		}
		unlockOrFatal(t, third)
	})
}

// A waiter whose session ends returns concurrency.ErrSessionExpired, not
// success and not a hang (etcd's Lock does not notice), and leaves nothing.
func TestSessionEndWhileWaiting(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/session"
	holder := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	lockOrFatal(t, holder)

	for _, tc := range []struct {
		name string
		end  func(s *concurrency.Session) error
	}{
		{"lease revoked", func(s *concurrency.Session) error {
			_, err := c.Client.Revoke(t.Context(), s.Lease())
			return err
		}},
		{"session closed", func(s *concurrency.Session) error { return s.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := quietlocktest.NewSession(t, c.NewClient(), ttl)
			results, _ := lockAll(t, []*lock.Mutex{lock.NewMutex(s, pfx)})
			quietlocktest.WaitFor(t, "the waiter", func() bool { return watchwait.Waiters() == 1 })
			if err := tc.end(s); err != nil {
				t.Fatal(err)
			}
			if r := <-results; r.err != concurrency.ErrSessionExpired {
				t.Fatalf("Lock: got %v, want %v", r.err, concurrency.ErrSessionExpired)
			}
			if got := watchwait.Waiters(); got != 0 {
				t.Errorf("waiters left: %d", got)
			}
			if got, want := c.Keys(pfx+"/"), []string{holder.Key()}; !slices.Equal(got, want) {
				t.Errorf("keys: got %q, want %q", got, want)
			}
		})
	}
}

// A waiter cut off from etcd while the owner's key is deleted and the
// history compacted past that deletion still wakes and acquires once it
// reconnects.
func TestCompactionWhileDisconnected(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/compact"
	holder := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	lockOrFatal(t, holder)
	p := quietlocktest.NewProxy(t, c.Endpoint)
	cli := quietlocktest.NewClient(t, p.Endpoint())
	waiter := lock.NewMutex(quietlocktest.NewSession(t, cli, ttl), pfx)
	results, _ := lockAll(t, []*lock.Mutex{waiter})
	quietlocktest.WaitFor(t, "the waiter", func() bool { return watchwait.Waiters() == 1 })

	p.Drop()
	unlockOrFatal(t, holder)
	for range 10 {
		if _, err := c.Client.Put(t.Context(), "/quietlock/test/elsewhere", "x"); err != nil {
			t.Fatal(err)
		}
	}
	rev := c.Stats().Revision
	if _, err := c.Client.Compact(t.Context(), rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	p.Heal()

	if r := <-results; r.err != nil {
		t.Fatalf("Lock after compaction: %v", r.err)
	}
	if got, want := c.Keys(pfx+"/"), []string{waiter.Key()}; !slices.Equal(got, want) {
		t.Errorf("keys: got %q, want %q", got, want)
	}
	unlockOrFatal(t, waiter)
}

// 1000 Lock/Unlock iterations over 6 mutexes on 2 clients, with contexts
// cancelled at random points (before, during and after a claim, while
// waiting, during Unlock): afterwards no key, watcher, stream, waiter or
// goroutine is left.
func TestChurnLeavesNothing(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/churn"
	iterations := 1000
	if testing.Short() {
		iterations = 200
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	base := c.Stats()

	clients := []*clientv3.Client{c.NewClient(), c.NewClient()}
	var ms []*lock.Mutex
	for i := range 6 {
		ms = append(ms, lock.NewMutex(quietlocktest.NewSession(t, clients[i%2], ttl), pfx))
	}
	var (
		wg       sync.WaitGroup
		next     atomic.Int64
		acquired atomic.Int64
		holders  atomic.Int64
	)
	for w, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(w)))
			for next.Add(1) <= int64(iterations) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(20000))*time.Microsecond)
				err := m.Lock(ctx)
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("Lock: %v", err)
					}
					continue
				}
				acquired.Add(1)
				if h := holders.Add(1); h != 1 {
					t.Errorf("%d holders at once", h)
				}
				if rng.IntN(2) == 0 {
					<-time.After(0) // let others run while we hold
					_ = m.Done()    // start the hold's watcher
				}
				holders.Add(-1)
				for {
					// Unlock under a random deadline; retry until it succeeds.
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(3000))*time.Microsecond)
					err := m.Unlock(ctx)
					cancel()
					if err == nil {
						break
					}
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("Unlock: %v", err)
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of %d iterations acquired the lock", acquired.Load(), iterations)
	if acquired.Load() == 0 {
		t.Error("no iteration acquired the lock")
	}
	if got := c.Keys(pfx + "/"); len(got) != 0 {
		t.Errorf("keys left: %q", got)
	}
	if got := watchwait.Entries(); got != 0 {
		t.Errorf("watch entries left: %d", got)
	}
	quietlocktest.WaitFor(t, "watchers and streams back to baseline", func() bool {
		st := c.Stats()
		return st.Watchers == base.Watchers && st.WatchStreams == base.WatchStreams
	})
}

// A stale Unlock never deletes a newer holder's key, and the hold's Done
// and Err report how each hold ended.
func TestFencing(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/fence"
	a := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	b := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)

	lockOrFatal(t, a)
	done, token := a.Done(), a.Rev()
	// An operator deletes a's key behind its back; b takes the lock.
	if _, err := c.Client.Delete(t.Context(), a.Key()); err != nil {
		t.Fatal(err)
	}
	<-done
	if got := a.Err(); got != lock.ErrKeyDeleted {
		t.Errorf("a.Err after its key was deleted: got %v, want %v", got, lock.ErrKeyDeleted)
	}
	lockOrFatal(t, b)
	if b.Rev() <= token {
		t.Errorf("fencing token did not grow: a %d, b %d", token, b.Rev())
	}
	// a's guarded write is refused, and a's Unlock leaves b's key alone.
	resp, err := c.Client.Txn(t.Context()).If(a.IsOwner()).Then(clientv3.OpPut("/quietlock/test/data", "a")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	if resp.Succeeded {
		t.Error("a's guarded write succeeded after it lost the lock")
	}
	if err := a.Unlock(t.Context()); err != nil {
		t.Errorf("a.Unlock after losing the lock: %v", err)
	}
	if got, want := c.Keys(pfx+"/"), []string{b.Key()}; !slices.Equal(got, want) {
		t.Errorf("keys after a's stale Unlock: got %q, want %q", got, want)
	}
	if err := a.Unlock(t.Context()); !errors.Is(err, lock.ErrNotHeld) || !errors.Is(err, concurrency.ErrLockReleased) {
		t.Errorf("second Unlock: got %v, want %v (and %v)", err, lock.ErrNotHeld, concurrency.ErrLockReleased)
	}

	done = b.Done()
	unlockOrFatal(t, b)
	<-done
	if got := b.Err(); got != lock.ErrUnlocked {
		t.Errorf("b.Err after Unlock: got %v, want %v", got, lock.ErrUnlocked)
	}

	// A hold ends when its session does.
	s := quietlocktest.NewSession(t, c.NewClient(), ttl)
	m := lock.NewMutex(s, pfx)
	lockOrFatal(t, m)
	done = m.Done()
	if _, err := c.Client.Revoke(t.Context(), s.Lease()); err != nil {
		t.Fatal(err)
	}
	<-done
	if got := m.Err(); got != lock.ErrKeyDeleted && got != concurrency.ErrSessionExpired {
		t.Errorf("Err after the lease was revoked: got %v, want %v or %v", got, lock.ErrKeyDeleted, concurrency.ErrSessionExpired)
	}
}

// Bad input gets a clear error from the first call and writes nothing.
func TestBadInput(t *testing.T) {
	c := quietlocktest.New(t)
	good := quietlocktest.NewSession(t, c.NewClient(), ttl)
	closedSession := quietlocktest.NewSession(t, c.NewClient(), ttl)
	if err := closedSession.Close(); err != nil {
		t.Fatal(err)
	}
	base := c.Stats()

	for _, tc := range []struct {
		name string
		m    *lock.Mutex
		want error
	}{
		{"nil session", lock.NewMutex(nil, "/quietlock/test/bad"), lock.ErrNilSession},
		{"empty prefix", lock.NewMutex(good, ""), lock.ErrEmptyPrefix},
		{"closed session", lock.NewMutex(closedSession, "/quietlock/test/bad"), concurrency.ErrSessionExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.m.Lock(t.Context()); err != tc.want {
				t.Errorf("Lock: got %v, want %v", err, tc.want)
			}
			if err := tc.m.TryLock(t.Context()); err != tc.want {
				t.Errorf("TryLock: got %v, want %v", err, tc.want)
			}
			wantUnlock := tc.want
			if tc.want == concurrency.ErrSessionExpired {
				wantUnlock = lock.ErrNotHeld // nothing was ever held
			}
			if err := tc.m.Unlock(t.Context()); !errors.Is(err, wantUnlock) {
				t.Errorf("Unlock: got %v, want %v", err, wantUnlock)
			}
			select {
			case <-tc.m.Done():
			default:
				t.Error("Done is not closed")
			}
			if tc.m.Err() == nil || tc.m.Rev() != 0 || tc.m.Key() != "" || tc.m.Header() != nil {
				t.Errorf("state: Err %v, Rev %d, Key %q, Header %v", tc.m.Err(), tc.m.Rev(), tc.m.Key(), tc.m.Header())
			}
			_ = tc.m.IsOwner() // must not panic
		})
	}
	if got := c.Stats(); got.Revision != base.Revision || got.RaftIndex != base.RaftIndex {
		t.Errorf("bad input wrote: revision %d -> %d, raft index %d -> %d", base.Revision, got.Revision, base.RaftIndex, got.RaftIndex)
	}
	if got := c.Keys("/quietlock/"); len(got) != 0 {
		t.Errorf("keys: %q", got)
	}

	// A prefix is a path: "/a" and "/ab" are different locks.
	a := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), "/quietlock/test/a")
	ab := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), "/quietlock/test/ab")
	lockOrFatal(t, a)
	if err := ab.TryLock(t.Context()); err != nil {
		t.Errorf("TryLock on /ab while /a is held: %v", err)
	}
	unlockOrFatal(t, ab)
	unlockOrFatal(t, a)
}

// faults lets a test act on the next Txn a client sends: before it is sent,
// or after it was applied but before its answer reaches the caller.
type faults struct {
	mu     sync.Mutex
	before func()
	lose   bool // the next Txn is applied, but its caller gets an error
}

var errLostAnswer = errors.New("test: answer lost")

func (f *faults) interceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if method != "/etcdserverpb.KV/Txn" {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	f.mu.Lock()
	before, lose := f.before, f.lose
	f.before, f.lose = nil, false
	f.mu.Unlock()
	if before != nil {
		before()
	}
	err := invoker(ctx, method, req, reply, cc, opts...)
	if lose && err == nil {
		return status.Error(codes.Unavailable, errLostAnswer.Error())
	}
	return err
}

func (f *faults) set(before func(), lose bool) {
	f.mu.Lock()
	f.before, f.lose = before, lose
	f.mu.Unlock()
}

// Calls whose outcome is decided while the caller is gone or deaf leave
// nothing behind and report the truth.
func TestUnknownOutcomes(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/outcomes"
	f := &faults{}
	cli := quietlocktest.NewInterceptedClient(t, c.Endpoint, f.interceptor)
	m := lock.NewMutex(quietlocktest.NewSession(t, cli, ttl), pfx)

	t.Run("claim wins after ctx is cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		f.set(cancel, false) // cancel just as the claim is sent
		base := c.Stats()
		if err := m.Lock(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Lock: got %v, want %v", err, context.Canceled)
		}
		if got := c.Keys(pfx + "/"); len(got) != 0 {
			t.Errorf("keys left: %q", got)
		}
		// The claim landed and was undone: a put and a delete.
		if got, want := c.Stats().Revision-base.Revision, int64(2); got != want {
			t.Errorf("revisions: got %d, want %d", got, want)
		}
		if m.Rev() != 0 || m.Key() != "\x00" {
			t.Errorf("Mutex holds after a cancelled Lock: Rev %d, Key %q", m.Rev(), m.Key())
		}
	})

	t.Run("TryLock claim applied, answer lost", func(t *testing.T) {
		f.set(nil, true)
		if err := m.TryLock(t.Context()); err == nil {
			t.Fatal("TryLock: got nil, want the injected error")
		}
		if got := c.Keys(pfx + "/"); len(got) != 0 {
			t.Errorf("keys left after a failed TryLock: %q", got)
		}
	})

	t.Run("Lock claim applied, answer lost", func(t *testing.T) {
		// Lock retries the transient error; its next read finds its own key.
		f.set(nil, true)
		base := c.Stats()
		lockOrFatal(t, m)
		if got, want := c.Keys(pfx+"/"), []string{m.Key()}; !slices.Equal(got, want) {
			t.Errorf("keys: got %q, want %q", got, want)
		}
		if got, want := c.Stats().Revision-base.Revision, int64(1); got != want {
			t.Errorf("revisions: got %d, want %d", got, want)
		}
	})

	t.Run("Unlock applied, answer lost", func(t *testing.T) {
		f.set(nil, true)
		if err := m.Unlock(t.Context()); err == nil {
			t.Fatal("Unlock: got nil, want the injected error")
		}
		if m.Rev() == 0 {
			t.Fatal("Mutex dropped its hold before etcd confirmed")
		}
		unlockOrFatal(t, m) // the retry finds the key gone: our own delete
		<-m.Done()
		if got := m.Err(); got != lock.ErrUnlocked {
			t.Errorf("Err: got %v, want %v", got, lock.ErrUnlocked)
		}
		if err := m.Unlock(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
			t.Errorf("third Unlock: got %v, want %v", err, lock.ErrNotHeld)
		}
	})
}
