package faulttest_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/internal/testutil"
	"github.com/quietlock/quietlock/internal/watchwait"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

// The fault tests run five candidates against a three-member etcd cluster.
// Each candidate reaches one member through a proxy of its own, so a test
// can cut one candidate off, or take its member away.
const (
	faultTTL     = 3 * time.Second
	faultMembers = 3
	faultPfx     = "/quietlock/test/fault"
	fenceKey     = "/quietlock/test/fenced-data"
	// recoverBound is how long after a fault is healed a holder must exist
	// again, beyond the TTL.
	recoverBound = 30 * time.Second
)

type faultEnv struct {
	t       *testing.T
	members []*quietlocktest.Server
	admin   *clientv3.Client
	rec     *recorder
	cands   []*faultCandidate
	mutex   bool // candidates use lock.Mutex rather than elect.Run
	mark    int  // holds recorded when holder() last returned
}

func newFaultEnv(t *testing.T, mutex bool, n int) *faultEnv {
	t.Helper()
	testutil.SkipOnExternal(t)
	dirs := make([]string, faultMembers)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	ms, err := quietlocktest.StartCluster(dirs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.Close()
		}
	})
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.Endpoint)
	}
	cfg := quietlocktest.ClientConfig(eps[0])
	cfg.Endpoints = eps
	admin, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	e := &faultEnv{t: t, members: ms, admin: admin, rec: &recorder{}, mutex: mutex}
	for i := range n {
		e.cands = append(e.cands, e.newCandidate(fmt.Sprintf("c%d", i), i%faultMembers))
	}
	return e
}

// term is one hold: of a lock.Mutex, or a term of elect.Run.
type term struct {
	name       string
	token      int64
	start, end time.Time // end is zero while the hold lasts
}

// write is a fenced write that etcd applied.
type write struct {
	name       string
	token, rev int64
}

// recorder keeps every hold and every applied fenced write, on this
// process's clock.
type recorder struct {
	mu     sync.Mutex
	terms  []*term
	writes []write
}

func (r *recorder) begin(name string, token int64) *term {
	r.mu.Lock()
	defer r.mu.Unlock()
	tm := &term{name: name, token: token, start: time.Now()}
	r.terms = append(r.terms, tm)
	return tm
}

func (r *recorder) finish(tm *term) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if tm.end.IsZero() {
		tm.end = time.Now()
	}
}

// count returns the number of holds recorded so far.
func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.terms)
}

// holdsSince reports whether name has an open hold among those recorded
// after the first n.
func (r *recorder) holdsSince(name string, n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tm := range r.terms[min(n, len(r.terms)):] {
		if tm.name == name && tm.end.IsZero() {
			return true
		}
	}
	return false
}

// cut ends the open hold of name now, if it has one: an operator is about
// to delete its key or revoke its lease, which ends the term in etcd at
// once; the holder learns of it only after the fact (as the documentation
// of elect says), so its own end can come after a successor's start.
func (r *recorder) cut(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tm := range slices.Backward(r.terms) {
		if tm.name == name && tm.end.IsZero() {
			tm.end = time.Now()
			return
		}
	}
}

func (r *recorder) applied(w write) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, w)
}

// holder returns the name of the candidate whose hold is open, if any.
func (r *recorder) holder() (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tm := range slices.Backward(r.terms) {
		if tm.end.IsZero() {
			return tm.name, true
		}
	}
	return "", false
}

// check verifies the invariants over everything recorded so far: holds do
// not overlap (for elect.Run, whose terms end before a successor can
// start), and etcd applied fenced writes in token order only: never a
// stale holder's write after a newer holder's.
func (r *recorder) check(t *testing.T, overlapFree bool) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	terms := slices.Clone(r.terms)
	slices.SortFunc(terms, func(a, b *term) int { return a.start.Compare(b.start) })
	for i := 1; i < len(terms) && overlapFree; i++ {
		prev, next := terms[i-1], terms[i]
		if prev.end.IsZero() || !prev.end.Before(next.start) {
			t.Errorf("holds overlap: %s (token %d) from %v to %v, %s (token %d) from %v",
				prev.name, prev.token, prev.start.Format("15:04:05.000"), prev.end.Format("15:04:05.000"),
				next.name, next.token, next.start.Format("15:04:05.000"))
		}
	}
	writes := slices.Clone(r.writes)
	slices.SortFunc(writes, func(a, b write) int { return int(a.rev - b.rev) })
	for i, w := range writes {
		if i > 0 && w.token < writes[i-1].token {
			t.Errorf("etcd applied a write with token %d (%s) after one with token %d (%s)", w.token, w.name, writes[i-1].token, writes[i-1].name)
		}
	}
}

// faultCandidate is one contender, running until stopped.
type faultCandidate struct {
	name   string
	member int
	proxy  *quietlocktest.Proxy
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan struct{}
}

func (e *faultEnv) newCandidate(name string, member int) *faultCandidate {
	p := quietlocktest.NewProxy(e.t, e.members[member].Endpoint)
	c := &faultCandidate{name: name, member: member, proxy: p, cli: quietlocktest.NewClient(e.t, p.Endpoint())}
	e.start(c)
	e.t.Cleanup(c.stop)
	return c
}

func (e *faultEnv) start(c *faultCandidate) {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan struct{})
	go func() {
		defer close(c.done)
		if e.mutex {
			e.runMutex(ctx, c)
			return
		}
		err := elect.Run(ctx, c.cli, faultPfx, c.name, elect.Callbacks{
			OnStartedLeading: func(ctx context.Context, t *elect.Term) {
				e.lead(ctx, c, t.Token, t.Guard(), ctx.Done())
			},
			OnStoppedLeading: func(t *elect.Term, _ error) { e.stale(c, t.Token, t.Guard()) },
		}, elect.WithTTL(faultTTL))
		if err != nil {
			e.t.Errorf("%s: Run: %v", c.name, err)
		}
	}()
}

func (c *faultCandidate) stop() {
	c.cancel()
	<-c.done
}

// lead records a hold, from now until ended is closed (recorded the moment
// it is), and makes a fenced write every 50 ms meanwhile.
func (e *faultEnv) lead(ctx context.Context, c *faultCandidate, token int64, guard clientv3.Cmp, ended <-chan struct{}) {
	tm := e.rec.begin(c.name, token)
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		<-ended
		e.rec.finish(tm)
	}()
	defer func() { <-recorded }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ended:
			return
		case <-tick.C:
			e.fenced(ctx, c, token, guard)
		}
	}
}

// fenced makes one write guarded by a hold's comparison and records it if
// etcd applied it.
func (e *faultEnv) fenced(ctx context.Context, c *faultCandidate, token int64, guard clientv3.Cmp) {
	resp, err := c.cli.Txn(ctx).If(guard).Then(clientv3.OpPut(fenceKey, fmt.Sprintf("%s %d", c.name, token))).Commit()
	if err == nil && resp.Succeeded {
		e.rec.applied(write{name: c.name, token: token, rev: resp.Header.Revision})
	}
}

// stale tries a write with a hold that is over in etcd, as a holder that
// has not noticed would; check makes sure etcd refused it if anyone newer
// had written.
func (e *faultEnv) stale(c *faultCandidate, token int64, guard clientv3.Cmp) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e.fenced(ctx, c, token, guard)
}

// runMutex takes the lock over and over, holding each time until the hold
// ends (Done) or ctx does, with a new session whenever the old one ended.
func (e *faultEnv) runMutex(ctx context.Context, c *faultCandidate) {
	var s *concurrency.Session
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	for ctx.Err() == nil {
		if s == nil {
			var err error
			if s, err = concurrency.NewSession(c.cli, concurrency.WithTTL(int(faultTTL/time.Second)), concurrency.WithContext(ctx)); err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
		}
		m := lock.NewMutex(s, faultPfx)
		err := m.Lock(ctx)
		if errors.Is(err, concurrency.ErrSessionExpired) {
			s.Close()
			s = nil
			continue
		}
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		token, guard := m.Rev(), m.IsOwner()
		hctx, cancel := context.WithCancel(ctx)
		e.lead(hctx, c, token, guard, anyDone(m.Done(), ctx.Done()))
		cancel()
		uctx, ucancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = m.Unlock(uctx)
		ucancel()
		e.stale(c, token, guard)
		// Give the others a turn, as a real service would not re-take the
		// lock the moment it released it.
		time.Sleep(100 * time.Millisecond)
	}
}

func anyDone(a, b <-chan struct{}) <-chan struct{} {
	c := make(chan struct{})
	go func() {
		defer close(c)
		select {
		case <-a:
		case <-b:
		}
	}()
	return c
}

// candidate returns the candidate named name.
func (e *faultEnv) candidate(name string) *faultCandidate {
	for _, c := range e.cands {
		if c.name == name {
			return c
		}
	}
	e.t.Fatalf("no candidate %q", name)
	return nil
}

// holder waits until some candidate holds and returns it.
func (e *faultEnv) holder() *faultCandidate {
	e.t.Helper()
	var name string
	quietlocktest.WaitFor(e.t, "a holder", func() bool {
		var ok bool
		name, ok = e.rec.holder()
		return ok && e.hasOwner()
	})
	e.mark = e.rec.count()
	return e.candidate(name)
}

// recovered waits, for at most the TTL plus recoverBound, until a holder
// other than not (if given) exists, and returns it. A holder exists when etcd
// has an owner key and a candidate holds: a lock.Mutex learns that its hold
// ended only after the fact, so an open hold alone may be stale.
func (e *faultEnv) recovered(not *faultCandidate) *faultCandidate {
	e.t.Helper()
	deadline := time.Now().Add(faultTTL + recoverBound)
	for time.Now().Before(deadline) {
		// A holder other than not, or not itself in a term begun since
		// holder() named it (its old term ended and it won again).
		name, ok := e.rec.holder()
		if ok && not != nil && name == not.name {
			ok = e.rec.holdsSince(name, e.mark)
		}
		if ok && e.hasOwner() {
			return e.candidate(name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("no holder %v after the fault", faultTTL+recoverBound)
	return nil
}

// hasOwner reports whether etcd has a key under the prefix.
func (e *faultEnv) hasOwner() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := e.admin.Get(ctx, faultPfx+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	return err == nil && resp.Count > 0
}

// leaderMember returns the index of the raft leader.
func (e *faultEnv) leaderMember() int {
	e.t.Helper()
	for i, m := range e.members {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := e.admin.Status(ctx, strings.TrimPrefix(m.Endpoint, "http://"))
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return i
		}
	}
	e.t.Fatal("no raft leader")
	return -1
}

// ownerKey returns the key that holds the lock, with its lease, waiting
// for one to exist.
func (e *faultEnv) ownerKey() (string, clientv3.LeaseID) {
	e.t.Helper()
	var key string
	var lease clientv3.LeaseID
	quietlocktest.WaitFor(e.t, "an owner key", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := e.admin.Get(ctx, faultPfx+"/", clientv3.WithFirstCreate()...)
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		key, lease = string(resp.Kvs[0].Key), clientv3.LeaseID(resp.Kvs[0].Lease)
		return true
	})
	return key, lease
}

// A fault does something bad to the cluster or a candidate, heals it, and
// returns when a holder exists again.
type fault struct {
	name string
	do   func(e *faultEnv, rng *rand.Rand)
}

var faultList = []fault{
	{"kill the holder's member, then restart it", func(e *faultEnv, _ *rand.Rand) {
		h := e.holder()
		m := e.members[h.member]
		m.Close()
		e.recovered(h)
		if err := m.Revive(); err != nil {
			e.t.Fatal(err)
		}
	}},
	{"kill the raft leader, then restart it", func(e *faultEnv, _ *rand.Rand) {
		m := e.members[e.leaderMember()]
		m.Close()
		time.Sleep(time.Second)
		if err := m.Revive(); err != nil {
			e.t.Fatal(err)
		}
		e.recovered(nil)
	}},
	{"black-hole the holder for longer than the TTL, then heal", func(e *faultEnv, _ *rand.Rand) {
		h := e.holder()
		h.proxy.Blackhole()
		e.recovered(h)
		time.Sleep(time.Second)
		h.proxy.Heal()
	}},
	{"black-hole a standby while the lock changes hands and history is compacted, then heal", func(e *faultEnv, rng *rand.Rand) {
		h := e.holder()
		var others []*faultCandidate
		for _, c := range e.cands {
			if c != h {
				others = append(others, c)
			}
		}
		s := others[rng.IntN(len(others))]
		s.proxy.Blackhole()
		key, _ := e.ownerKey()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.rec.cut(h.name)
		if _, err := e.admin.Delete(ctx, key); err != nil {
			e.t.Fatal(err)
		}
		e.recovered(h)
		resp, err := e.admin.Get(ctx, "compact")
		if err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.admin.Compact(ctx, resp.Header.Revision); err != nil {
			e.t.Fatal(err)
		}
		s.proxy.Heal()
		// s missed the handover while cut off. It must still be waiting on
		// the right owner: with everyone else gone, it takes over.
		for _, c := range e.cands {
			if c != s {
				c.stop()
			}
		}
		quietlocktest.WaitFor(e.t, s.name+" holding after the others left", func() bool {
			name, ok := e.rec.holder()
			return ok && name == s.name
		})
		for _, c := range e.cands {
			if c != s {
				e.start(c)
			}
		}
	}},
	{"compact past every watcher, then hand over", func(e *faultEnv, _ *rand.Rand) {
		h := e.holder()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := e.admin.Get(ctx, "compact")
		if err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.admin.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
			e.t.Fatal(err)
		}
		key, _ := e.ownerKey()
		e.rec.cut(h.name)
		if _, err := e.admin.Delete(ctx, key); err != nil {
			e.t.Fatal(err)
		}
		e.recovered(h)
	}},
	{"revoke the holder's lease behind its back", func(e *faultEnv, _ *rand.Rand) {
		h := e.holder()
		_, lease := e.ownerKey()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.rec.cut(h.name)
		if _, err := e.admin.Revoke(ctx, lease); err != nil {
			e.t.Fatal(err)
		}
		e.recovered(h)
	}},
}

// settle waits until no key of a dead session is left: every key under the
// prefix has a live lease.
func (e *faultEnv) settle() {
	e.t.Helper()
	quietlocktest.WaitFor(e.t, "no keys of dead sessions", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := e.admin.Get(ctx, faultPfx+"/", clientv3.WithPrefix())
		if err != nil {
			return false
		}
		for _, kv := range resp.Kvs {
			ttl, err := e.admin.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
			if err != nil || ttl.TTL <= 0 {
				return false
			}
		}
		return true
	})
}

// finish stops every candidate and checks that nothing is left: no keys,
// no watches.
func (e *faultEnv) finish() {
	e.t.Helper()
	for _, c := range e.cands {
		c.stop()
	}
	e.rec.check(e.t, !e.mutex)
	quietlocktest.WaitFor(e.t, "no keys left", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := e.admin.Get(ctx, faultPfx+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 0
	})
	if n := watchwait.Entries(); n != 0 {
		e.t.Errorf("watch entries left: %d", n)
	}
	// No candidate runs: no server watcher may be left on any member (the
	// gauges are the whole process's). clientv3 re-opens a client's watch
	// stream after reconnecting even when every watch on it was cancelled
	// during the outage, and keeps it until that client's next watch or its
	// close: at most one idle stream per client. Goroutines are checked by
	// goleak once the cluster is gone.
	quietlocktest.WaitFor(e.t, "watchers back to zero", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		m, err := quietlocktest.Metrics(ctx, e.members[0].Endpoint, "etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_watch_stream_total")
		if err == nil && m[1] != 0 {
			e.t.Logf("idle watch streams left: %v (clients: %d)", m[1], len(e.cands))
		}
		return err == nil && m[0] == 0 && m[1] <= float64(len(e.cands))
	})
	if n := testutil.LibraryGoroutines(); n != 0 {
		e.t.Errorf("goroutines of the library left: %d", n)
	}
}

func faultKinds(t *testing.T, f func(t *testing.T, mutex bool)) {
	for _, mutex := range []bool{false, true} {
		name := "elect.Run"
		if mutex {
			name = "lock.Mutex"
		}
		t.Run(name, func(t *testing.T) { f(t, mutex) })
	}
}

// Each fault, for elect.Run and lock.Mutex candidates spread over the
// members of a three-member cluster: afterwards a holder exists again within
// the TTL plus a bound, terms never overlapped (elect.Run), etcd refused every
// write of a stale holder, and once stopped nothing is left.
func TestFaults(t *testing.T) {
	faultKinds(t, func(t *testing.T, mutex bool) {
		for _, f := range faultList {
			t.Run(f.name, func(t *testing.T) {
				e := newFaultEnv(t, mutex, 5)
				e.holder()
				f.do(e, rand.New(rand.NewPCG(1, 2)))
				e.recovered(nil)
				e.settle()
				e.finish()
			})
		}
	})
}

// A seeded random run of faults among five candidates, checking the same
// invariants throughout. $QUIETLOCK_CHAOS_FAULTS sets the number of faults
// (default 12, so CI stays short; run it with 200 or more for the long
// version); $QUIETLOCK_CHAOS_SEED replays a run.
func TestChaos(t *testing.T) {
	n := 12
	if v := os.Getenv("QUIETLOCK_CHAOS_FAULTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	if testing.Short() {
		n = 4
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("QUIETLOCK_CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	faultKinds(t, func(t *testing.T, mutex bool) {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("replay with QUIETLOCK_CHAOS_SEED=%d QUIETLOCK_CHAOS_FAULTS=%d", seed, n)
			}
		})
		e := newFaultEnv(t, mutex, 5)
		rng := rand.New(rand.NewPCG(seed, 0))
		counts := map[string]int{}
		for i := range n {
			f := faultList[rng.IntN(len(faultList))]
			counts[f.name]++
			e.holder()
			f.do(e, rng)
			e.recovered(nil)
			e.rec.check(t, !mutex)
			if t.Failed() {
				t.Fatalf("after fault %d (%s), seed %d", i, f.name, seed)
			}
		}
		e.settle()
		e.finish()
		e.rec.mu.Lock()
		t.Logf("seed %d: %d faults %v; %d holds, %d fenced writes applied", seed, n, counts, len(e.rec.terms), len(e.rec.writes))
		e.rec.mu.Unlock()
	})
}
