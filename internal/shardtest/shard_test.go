//go:build go1.24

package shardtest_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/goleak"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/quietlocktest"
	"github.com/quietlock/quietlock/shard"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const pfx = "/svc/shards"

var debugLog *slog.Logger

func init() {
	if os.Getenv("SHARD_DEBUG") != "" {
		debugLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
}

func shardNames(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("s%03d", i)
	}
	return s
}

// record is one callback of one process, in the order the test saw them.
type record struct {
	kind   string // "start", "end" (the term's context is done), "stopped"
	id     string
	shard  string
	token  int64
	reason error
}

// journal collects every process's callbacks, in one order.
type journal struct {
	fenced bool // leaders make a fenced write as they start

	mu  sync.Mutex
	log []record
}

func (j *journal) add(r record) {
	j.mu.Lock()
	j.log = append(j.log, r)
	j.mu.Unlock()
}

func (j *journal) records() []record {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.log)
}

// since returns the records after the first n.
func (j *journal) since(n int) []record {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.log[n:])
}

func (j *journal) len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.log)
}

// checkNoOverlap fails the test if a shard's term started before the
// previous term of that shard had ended, or if a shard's tokens did not grow.
// A term whose key an operator deleted, or whose lease an operator revoked,
// ended in etcd at once and its leader learns of it after the fact (as
// elect's documentation says): its end may come after a successor's start.
func (j *journal) checkNoOverlap(t *testing.T) (terms int) {
	t.Helper()
	type term struct {
		shard string
		token int64
	}
	afterTheFact := map[term]bool{}
	for _, r := range j.records() {
		if r.kind == "end" && (errors.Is(r.reason, elect.ErrKeyDeleted) || errors.Is(r.reason, concurrency.ErrSessionExpired)) {
			afterTheFact[term{r.shard, r.token}] = true
		}
	}
	open := map[string]record{}
	last := map[string]int64{}
	for _, r := range j.records() {
		switch r.kind {
		case "start":
			terms++
			if o, ok := open[r.shard]; ok && !afterTheFact[term{o.shard, o.token}] {
				t.Errorf("shard %s: %s started term %d while %s's term %d lasted", r.shard, r.id, r.token, o.id, o.token)
			}
			if r.token <= last[r.shard] {
				t.Errorf("shard %s: token %d after %d", r.shard, r.token, last[r.shard])
			}
			open[r.shard], last[r.shard] = r, r.token
		case "end":
			if o, ok := open[r.shard]; ok && o.token == r.token {
				delete(open, r.shard)
			}
		}
	}
	return terms
}

// proc is one process: a client of its own and a shard.Runner.
type proc struct {
	id     string
	cli    *clientv3.Client
	r      *shard.Runner
	cancel context.CancelFunc
	done   chan error
}

// start runs a Runner for the shards under identity id on cli, recording
// its callbacks in j. With j.fenced, each leader writes its token to the
// shard's data key as it starts, fenced by its term.
func start(t *testing.T, cli *clientv3.Client, j *journal, id string, shards []string, opts ...shard.Option) *proc {
	t.Helper()
	cb := shard.Callbacks{
		OnStartedLeading: func(ctx context.Context, sh string, term *elect.Term) {
			j.add(record{kind: "start", id: id, shard: sh, token: term.Token})
			if j.fenced {
				_, _ = term.Txn(ctx).Then(clientv3.OpPut("/svc/data/"+sh, fmt.Sprint(term.Token))).Commit()
			}
			<-ctx.Done()
			j.add(record{kind: "end", id: id, shard: sh, token: term.Token, reason: context.Cause(ctx)})
		},
		OnStoppedLeading: func(sh string, term *elect.Term, reason error) {
			j.add(record{kind: "stopped", id: id, shard: sh, token: term.Token, reason: reason})
		},
	}
	if debugLog != nil {
		opts = append(opts, shard.WithLogger(debugLog.With("proc", id)))
	}
	r, err := shard.New(cli, pfx, id, cb, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Add(shards...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{id: id, cli: cli, r: r, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- r.Run(ctx) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop ends Run and returns its error; later calls return nil.
func (p *proc) stop(t *testing.T) error {
	t.Helper()
	p.cancel()
	select {
	case err, ok := <-p.done:
		if ok {
			close(p.done)
		}
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("Run of %s did not return", p.id)
		return nil
	}
}

// balanced reports whether every shard is led, each by a process of procs,
// as etcd says, and each process leads floor(n/m) or ceil(n/m) of them.
func balanced(t *testing.T, c *quietlocktest.Etcd, n int, procs ...*proc) bool {
	t.Helper()
	count := map[string]int{}
	for _, p := range procs {
		count[p.id] = len(p.r.Leading())
	}
	total := 0
	for _, p := range procs {
		k := count[p.id]
		if k < n/len(procs) || k > (n+len(procs)-1)/len(procs) {
			return false
		}
		total += k
	}
	if total != n {
		return false
	}
	// And etcd agrees: one leader key per shard, no other.
	return len(c.Keys(pfx+"/shards/")) == n
}

// settle waits until the server's raft log has not moved for half a
// second: writes the runners had in flight while reaching a state (a claim
// sent on a view a moment old, say) have landed, so counts taken next are
// the state's own.
func settle(t *testing.T, c *quietlocktest.Etcd) {
	t.Helper()
	last := c.Stats().RaftIndex
	quietlocktest.WaitFor(t, "the raft log at rest", func() bool {
		time.Sleep(500 * time.Millisecond)
		now := c.Stats().RaftIndex
		if now == last {
			return true
		}
		last = now
		return false
	})
}

func leases(t *testing.T, c *quietlocktest.Etcd) int {
	t.Helper()
	resp, err := c.Client.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// Balance after start, a join and a graceful leave, with a TTL longer than
// the test's waits: every handover is a resignation, never an expiry.
func TestBalanceJoinLeave(t *testing.T) {
	c := quietlocktest.New(t)
	const n = 60
	shards := shardNames(n)
	j := &journal{}
	ttl := shard.WithTTL(60 * time.Second)
	base := c.Stats()

	a := start(t, c.NewClient(), j, "a", shards, ttl)
	b := start(t, c.NewClient(), j, "b", shards, ttl)
	d := start(t, c.NewClient(), j, "c", shards, ttl)
	quietlocktest.WaitFor(t, "3 processes balanced", func() bool { return balanced(t, c, n, a, b, d) })
	if got := leases(t, c); got != 3 {
		t.Errorf("%d leases for 3 processes, want 3", got)
	}
	// (A runner can lead before its watch is registered: wait for it.)
	quietlocktest.WaitFor(t, "3 server watchers and 3 watch streams for 3 processes and 60 shards", func() bool {
		st := c.Stats()
		return st.Watchers-base.Watchers == 3 && st.WatchStreams-base.WatchStreams == 3
	})
	if got := len(c.Keys(pfx + "/")); got != n+3 {
		t.Errorf("%d keys, want %d (a leader key per shard, a membership key per process)", got, n+3)
	}

	// Every shard is an election with etcd's layout: etcd's Election
	// reports the same leader.
	obs, err := concurrency.NewSession(c.NewClient())
	if err != nil {
		t.Fatal(err)
	}
	// a learns of b's and c's claims through its watch, which may still be
	// delivering them when the counts above balance: wait for its view to
	// catch up with etcd's.
	settle(t, c)
	etcdSays := map[string]string{}
	for _, sh := range shards {
		resp, err := concurrency.NewElection(obs, pfx+"/shards/"+sh).Leader(t.Context())
		if err != nil {
			t.Fatalf("shard %s: etcd's Election: %v", sh, err)
		}
		etcdSays[sh] = string(resp.Kvs[0].Value)
	}
	quietlocktest.WaitFor(t, "a's view of the leaders to match etcd's Election", func() bool {
		leaders := a.r.Leaders()
		for _, sh := range shards {
			if leaders[sh] != etcdSays[sh] {
				return false
			}
		}
		return true
	})
	if err := obs.Close(); err != nil {
		t.Fatal(err)
	}

	// A join: the others hand over exactly what the newcomer's share needs.
	settle(t, c)
	before := c.Stats()
	e := start(t, c.NewClient(), j, "d", shards, ttl)
	quietlocktest.WaitFor(t, "4 processes balanced", func() bool { return balanced(t, c, n, a, b, d, e) })
	settle(t, c)
	after := c.Stats()
	// A membership key, 15 resignations, 15 claims; and the lease grant,
	// a raft entry only.
	if revs, entries := after.Revision-before.Revision, after.RaftIndex-before.RaftIndex; revs != 1+15+15 || entries != revs+1 {
		t.Errorf("join: %d revisions, %d raft entries; want %d and %d", revs, entries, 1+15+15, 1+15+15+1)
	}

	// A graceful leave: revoking the lease deletes all of d's keys at once.
	before = c.Stats()
	if err := e.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := leases(t, c); got != 3 {
		t.Errorf("after a leave: %d leases, want 3", got)
	}
	quietlocktest.WaitFor(t, "3 processes balanced again", func() bool { return balanced(t, c, n, a, b, d) })
	settle(t, c)
	after = c.Stats()
	// The revocation and 15 claims.
	if revs, entries := after.Revision-before.Revision, after.RaftIndex-before.RaftIndex; revs != 1+15 || entries != revs {
		t.Errorf("leave: %d revisions, %d raft entries; want %d and %d", revs, entries, 1+15, 1+15)
	}

	for _, p := range []*proc{a, b, d} {
		if err := p.stop(t); err != nil {
			t.Errorf("%s: Run: %v", p.id, err)
		}
	}
	if terms := j.checkNoOverlap(t); terms < n+15+15 {
		t.Errorf("%d terms, want at least %d", terms, n+30)
	}
	for _, r := range j.records() {
		if r.kind == "stopped" && !errors.Is(r.reason, shard.ErrRebalanced) && !errors.Is(r.reason, elect.ErrResigned) {
			t.Errorf("%s stopped leading %s: %v", r.id, r.shard, r.reason)
		}
	}
	assertNothingLeft(t, c, base)
}

// assertNothingLeft checks that the runners left no key, lease or watch.
func assertNothingLeft(t *testing.T, c *quietlocktest.Etcd, base quietlocktest.Stats) {
	t.Helper()
	if keys := c.Keys(pfx + "/"); len(keys) != 0 {
		t.Errorf("keys left: %v", keys)
	}
	if got := leases(t, c); got != 0 {
		t.Errorf("%d leases left", got)
	}
	quietlocktest.WaitFor(t, "watchers back to baseline", func() bool {
		st := c.Stats()
		return st.Watchers == base.Watchers
	})
}

// While the leaders do not change, the runners write nothing.
func TestStableWritesNothing(t *testing.T) {
	c := quietlocktest.New(t)
	const n = 100
	shards := shardNames(n)
	j := &journal{}
	// A TTL long enough that a stalled renewal on a loaded machine does not
	// end the terms inside the window (a step-down would write).
	opts := []shard.Option{shard.WithTTL(5 * time.Second)}
	var procs []*proc
	for _, id := range []string{"a", "b", "c"} {
		procs = append(procs, start(t, c.NewClient(), j, id, shards, opts...))
	}
	quietlocktest.WaitFor(t, "balanced", func() bool { return balanced(t, c, n, procs...) })
	settle(t, c)
	terms := len(j.records())

	// Eight seconds: each process renews its lease several times.
	before := c.Stats()
	time.Sleep(8 * time.Second)
	after := c.Stats()
	if dr, di := after.Revision-before.Revision, after.RaftIndex-before.RaftIndex; dr != 0 || di != 0 {
		t.Errorf("stable for 8 s: +%d revisions, +%d raft entries, want 0 and 0", dr, di)
	}
	if got := len(j.records()); got != terms {
		t.Errorf("%d callbacks while stable", got-terms)
	}
	for _, p := range procs {
		if err := p.stop(t); err != nil {
			t.Errorf("%s: Run: %v", p.id, err)
		}
	}
	j.checkNoOverlap(t)
}

// A partitioned process steps down from all its shards before its lease can
// expire; the others take them over once it has; it comes back with a new
// lease and gets its share again. A crashed one's shards move after its
// TTL. No shard ever has two overlapping terms.
func TestPartitionAndCrash(t *testing.T) {
	c := quietlocktest.New(t)
	const n = 30
	shards := shardNames(n)
	j := &journal{fenced: true}
	opts := []shard.Option{shard.WithTTL(2 * time.Second), shard.WithSafetyMargin(500 * time.Millisecond)}
	base := c.Stats()

	px := quietlocktest.NewProxy(t, c.Endpoint)
	a := start(t, c.NewClient(), j, "a", shards, opts...)
	b := start(t, c.NewClient(), j, "b", shards, opts...)
	p := start(t, quietlocktest.NewClient(t, px.Endpoint()), j, "p", shards, opts...)
	quietlocktest.WaitFor(t, "balanced", func() bool { return balanced(t, c, n, a, b, p) })
	led := p.r.Leading()

	// (Only the terms that end from here on: p may have handed shards over
	// while the three joined.)
	mark := j.len()
	px.Blackhole()
	quietlocktest.WaitFor(t, "the others lead everything", func() bool { return balanced(t, c, n, a, b) })
	// (checkNoOverlap below shows that p's terms ended before the others'
	// began.)
	ended := 0
	for _, r := range j.since(mark) {
		if r.kind == "end" && r.id == "p" {
			if !errors.Is(r.reason, elect.ErrLeadershipLost) || !errors.Is(r.reason, elect.ErrLeaseDeadline) {
				t.Errorf("p's term of %s ended: %v, want ErrLeaseDeadline", r.shard, r.reason)
			}
			ended++
		}
	}
	if ended != len(led) {
		t.Errorf("p's terms of %d shards ended, it led %d", ended, len(led))
	}

	px.Heal()
	quietlocktest.WaitFor(t, "balanced after the partition", func() bool { return balanced(t, c, n, a, b, p) })

	// A crash: p's client goes away without revoking anything.
	px.Blackhole()
	px.Close()
	quietlocktest.WaitFor(t, "the others lead everything after the crash", func() bool { return balanced(t, c, n, a, b) })
	if err := p.stop(t); err != nil {
		t.Errorf("p: Run: %v", err)
	}
	// Each shard's data holds the token of its current term: no leader
	// whose term had ended wrote after its successor.
	quietlocktest.WaitFor(t, "the current leaders' fenced writes", func() bool {
		for _, sh := range shards {
			resp, err := c.Client.Get(t.Context(), pfx+"/shards/"+sh+"/", clientv3.WithFirstCreate()...)
			if err != nil || len(resp.Kvs) != 1 {
				return false
			}
			data, err := c.Client.Get(t.Context(), "/svc/data/"+sh)
			if err != nil || len(data.Kvs) != 1 || string(data.Kvs[0].Value) != fmt.Sprint(resp.Kvs[0].CreateRevision) {
				return false
			}
		}
		return true
	})
	for _, q := range []*proc{a, b} {
		if err := q.stop(t); err != nil {
			t.Errorf("%s: Run: %v", q.id, err)
		}
	}
	j.checkNoOverlap(t)
	quietlocktest.WaitFor(t, "p's lease expired", func() bool { return leases(t, c) == 0 })
	assertNothingLeft(t, c, base)
}

// Shards come and go at runtime.
func TestAddRemove(t *testing.T) {
	c := quietlocktest.New(t)
	j := &journal{}
	shards := shardNames(10)
	a := start(t, c.NewClient(), j, "a", shards)
	b := start(t, c.NewClient(), j, "b", shards)
	quietlocktest.WaitFor(t, "balanced", func() bool { return balanced(t, c, 10, a, b) })

	mark := j.len()
	for _, p := range []*proc{a, b} {
		if err := p.r.Remove("s000", "s001"); err != nil {
			t.Fatal(err)
		}
	}
	quietlocktest.WaitFor(t, "8 shards balanced", func() bool { return balanced(t, c, 8, a, b) })
	for _, r := range j.since(mark) {
		if r.kind == "stopped" && (r.shard == "s000" || r.shard == "s001") && !errors.Is(r.reason, shard.ErrRemoved) {
			t.Errorf("%s stopped leading %s: %v, want ErrRemoved", r.id, r.shard, r.reason)
		}
	}
	for _, p := range []*proc{a, b} {
		if err := p.r.Add("new"); err != nil {
			t.Fatal(err)
		}
		if got := p.r.Shards(); len(got) != 9 || !slices.Contains(got, "new") {
			t.Errorf("Shards: %v", got)
		}
	}
	quietlocktest.WaitFor(t, "9 shards balanced", func() bool { return balanced(t, c, 9, a, b) })
	if keys := c.Keys(pfx + "/shards/s000/"); len(keys) != 0 {
		t.Errorf("removed shard still has keys: %v", keys)
	}
	a.stop(t)
	b.stop(t)
	j.checkNoOverlap(t)
}

func TestBadInput(t *testing.T) {
	c := quietlocktest.New(t)
	cli := c.NewClient()
	before := c.Stats()
	for _, tc := range []struct {
		name string
		cli  *clientv3.Client
		pfx  string
		id   string
		opts []shard.Option
		want error
	}{
		{"nil client", nil, pfx, "a", nil, shard.ErrNilClient},
		{"empty prefix", cli, "", "a", nil, shard.ErrEmptyPrefix},
		{"empty identity", cli, pfx, "", nil, shard.ErrEmptyIdentity},
		{"nil option", cli, pfx, "a", []shard.Option{nil}, shard.ErrBadOption},
		{"fractional TTL", cli, pfx, "a", []shard.Option{shard.WithTTL(1500 * time.Millisecond)}, shard.ErrBadOption},
		{"margin too large", cli, pfx, "a", []shard.Option{shard.WithTTL(2 * time.Second), shard.WithSafetyMargin(time.Second)}, shard.ErrBadOption},
		{"zero margin", cli, pfx, "a", []shard.Option{shard.WithSafetyMargin(0)}, shard.ErrBadOption},
		{"nil logger", cli, pfx, "a", []shard.Option{shard.WithLogger(nil)}, shard.ErrBadOption},
		{"nil registerer", cli, pfx, "a", []shard.Option{shard.WithRegisterer(nil)}, shard.ErrBadOption},
		{"no writes in flight", cli, pfx, "a", []shard.Option{shard.WithMaxInFlight(0)}, shard.ErrBadOption},
	} {
		if _, err := shard.New(tc.cli, tc.pfx, tc.id, shard.Callbacks{}, tc.opts...); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	r, err := shard.New(cli, pfx, "a", shard.Callbacks{})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{{""}, {"ok", "a/b"}} {
		if err := r.Add(bad...); !errors.Is(err, shard.ErrBadShard) {
			t.Errorf("Add(%q): %v, want ErrBadShard", bad, err)
		}
		if err := r.Remove(bad...); !errors.Is(err, shard.ErrBadShard) {
			t.Errorf("Remove(%q): %v, want ErrBadShard", bad, err)
		}
	}
	if got := r.Shards(); len(got) != 0 {
		t.Errorf("invalid Add added %v", got)
	}
	if st := c.Stats(); st.Revision != before.Revision || st.RaftIndex != before.RaftIndex {
		t.Errorf("bad input wrote: revision %d -> %d, raft index %d -> %d", before.Revision, st.Revision, before.RaftIndex, st.RaftIndex)
	}

	// One Run at a time.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	quietlocktest.WaitFor(t, "joined", func() bool { return len(c.Keys(pfx+"/members/")) == 1 })
	if err := r.Run(t.Context()); !errors.Is(err, shard.ErrRunning) {
		t.Errorf("second Run: %v, want ErrRunning", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if keys := c.Keys(pfx + "/"); len(keys) != 0 {
		t.Errorf("keys left: %v", keys)
	}
}
