//go:build go1.24

package electtest_test

import (
	"context"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/goleak"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/internal/watchwait"
	"github.com/quietlock/quietlock/quietlocktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ttl is the session TTL, in seconds, of tests whose sessions must not
// expire while they run.
const ttl = 30

func newElection(t *testing.T, c *quietlocktest.Etcd, pfx string) (*elect.Election, *concurrency.Session) {
	t.Helper()
	s := quietlocktest.NewSession(t, c.NewClient(), ttl)
	return elect.NewElection(s, pfx), s
}

type outcome struct {
	i   int
	err error
}

// campaignAll runs Campaign for every election in its own goroutine, until
// it returns or the test ends.
func campaignAll(t *testing.T, es []*elect.Election) <-chan outcome {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan outcome, len(es))
	var wg sync.WaitGroup
	for i, e := range es {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out <- outcome{i, e.Campaign(ctx, "candidate")}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return out
}

func campaignOrFatal(t *testing.T, e *elect.Election, val string) {
	t.Helper()
	if err := e.Campaign(t.Context(), val); err != nil {
		t.Fatalf("Campaign: %v", err)
	}
}

func next(t *testing.T, ch <-chan *clientv3.GetResponse) *clientv3.GetResponse {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("Observe channel closed")
		}
		return r
	case <-t.Context().Done():
		t.Fatal("no response from Observe")
	}
	return nil
}

// nextLeader reads Observe until it reports key with value val.
func nextLeader(t *testing.T, ch <-chan *clientv3.GetResponse, key, val string) *clientv3.GetResponse {
	t.Helper()
	for {
		r := next(t, ch)
		if string(r.Kvs[0].Key) == key && string(r.Kvs[0].Value) == val {
			return r
		}
	}
}

// A leader and 16 candidates, each with its own client and session: while
// the candidates wait, the revision and raft index do not move and only the
// leader's key exists.
func TestWaitingCandidatesWriteNothing(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/elect-idle"
	leader, _ := newElection(t, c, pfx)
	campaignOrFatal(t, leader, "leader")
	var es []*elect.Election
	for range 16 {
		e, _ := newElection(t, c, pfx)
		es = append(es, e)
	}
	base := c.Stats()
	results := campaignAll(t, es)
	quietlocktest.WaitFor(t, "16 waiting candidates", func() bool {
		return watchwait.Waiters() == 16 && c.Stats().Watchers == base.Watchers+16
	})
	d := 10 * time.Second
	if testing.Short() {
		d = 2 * time.Second
	}
	time.Sleep(d)
	after := c.Stats()
	if after.Revision != base.Revision || after.RaftIndex != base.RaftIndex {
		t.Errorf("candidates wrote while waiting: revision %d -> %d, raft index %d -> %d",
			base.Revision, after.Revision, base.RaftIndex, after.RaftIndex)
	}
	if got, want := c.Keys(pfx+"/"), []string{leader.Key()}; !slices.Equal(got, want) {
		t.Errorf("keys: got %q, want %q", got, want)
	}
	select {
	case r := <-results:
		t.Fatalf("candidate %d returned while the leader led: %v", r.i, r.err)
	default:
	}
}

// Resign hands over to exactly one candidate, and Observe on a third client
// reports the old leader, then the new one, then the new one's proclaimed
// values.
func TestResignHandsOver(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/elect-resign"
	leader, _ := newElection(t, c, pfx)
	campaignOrFatal(t, leader, "old")
	observer, _ := newElection(t, c, pfx)
	obs := observer.Observe(t.Context())
	if r := next(t, obs); string(r.Kvs[0].Key) != leader.Key() || string(r.Kvs[0].Value) != "old" {
		t.Fatalf("first observed: %s=%s, want %s=old", r.Kvs[0].Key, r.Kvs[0].Value, leader.Key())
	}

	var es []*elect.Election
	for range 4 {
		e, _ := newElection(t, c, pfx)
		es = append(es, e)
	}
	results := campaignAll(t, es)
	quietlocktest.WaitFor(t, "waiting candidates", func() bool { return watchwait.Waiters() == 4 })
	base := c.Stats()
	if err := leader.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if leader.Key() != "" || leader.Rev() != 0 {
		t.Errorf("after Resign: Key %q, Rev %d", leader.Key(), leader.Rev())
	}
	r := <-results
	if r.err != nil {
		t.Fatalf("Campaign: %v", r.err)
	}
	winner := es[r.i]
	nextLeader(t, obs, winner.Key(), "candidate")
	quietlocktest.WaitFor(t, "the others waiting again", func() bool { return watchwait.Waiters() == 3 })
	if got := c.Stats().Revision - base.Revision; got != 2 {
		t.Errorf("revisions for the handover: got %d, want 2", got)
	}
	select {
	case r := <-results:
		t.Fatalf("a second candidate (%d) returned: %v", r.i, r.err)
	default:
	}

	if err := winner.Proclaim(t.Context(), "proclaimed"); err != nil {
		t.Fatal(err)
	}
	nextLeader(t, obs, winner.Key(), "proclaimed")
	if err := leader.Proclaim(t.Context(), "stale"); err != concurrency.ErrElectionNotLeader {
		t.Errorf("Proclaim by a resigned leader: got %v, want %v", err, concurrency.ErrElectionNotLeader)
	}
	resp, err := observer.Leader(t.Context())
	if err != nil || string(resp.Kvs[0].Value) != "proclaimed" {
		t.Errorf("Leader: got %v, %v", resp, err)
	}
}

// Our Election, etcd's concurrency.Election and their leader observation
// interoperate on one prefix, both ways.
func TestInteropWithEtcdElection(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/elect-interop"
	ours, _ := newElection(t, c, pfx)
	theirs := concurrency.NewElection(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	theirObs := theirs.Observe(t.Context())

	if err := theirs.Campaign(t.Context(), "etcd"); err != nil {
		t.Fatal(err)
	}
	results := campaignAll(t, []*elect.Election{ours})
	quietlocktest.WaitFor(t, "our candidate waiting", func() bool { return watchwait.Waiters() == 1 })
	resp, err := ours.Leader(t.Context())
	if err != nil || string(resp.Kvs[0].Value) != "etcd" {
		t.Fatalf("our Leader while etcd leads: %v, %v", resp, err)
	}
	if err := theirs.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r := <-results; r.err != nil {
		t.Fatalf("our Campaign: %v", r.err)
	}
	// etcd's Observe sees our leader.
	for {
		r := <-theirObs
		if string(r.Kvs[0].Key) == ours.Key() {
			break
		}
	}

	// etcd's Campaign queues behind ours and wins when we resign.
	done := make(chan error, 1)
	go func() { done <- theirs.Campaign(t.Context(), "etcd again") }()
	quietlocktest.WaitFor(t, "etcd's queued key", func() bool { return len(c.Keys(pfx+"/")) == 2 })
	select {
	case err := <-done:
		t.Fatalf("etcd's Campaign returned while we led: %v", err)
	default:
	}
	if err := ours.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	resp, err = ours.Leader(t.Context())
	if err != nil || string(resp.Kvs[0].Value) != "etcd again" {
		t.Fatalf("our Leader after etcd won: %v, %v", resp, err)
	}
	if err := theirs.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := ours.Leader(t.Context()); err != concurrency.ErrElectionNoLeader {
		t.Errorf("Leader with none: got %v, want %v", err, concurrency.ErrElectionNoLeader)
	}
}

// A candidate whose session is revoked while it waits returns
// concurrency.ErrSessionExpired and leaves nothing.
func TestSessionRevokedWhileCampaigning(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/elect-revoked"
	leader, _ := newElection(t, c, pfx)
	campaignOrFatal(t, leader, "leader")
	e, s := newElection(t, c, pfx)
	results := campaignAll(t, []*elect.Election{e})
	quietlocktest.WaitFor(t, "the candidate waiting", func() bool { return watchwait.Waiters() == 1 })
	if _, err := c.Client.Revoke(t.Context(), s.Lease()); err != nil {
		t.Fatal(err)
	}
	if r := <-results; r.err != concurrency.ErrSessionExpired {
		t.Fatalf("Campaign: got %v, want %v", r.err, concurrency.ErrSessionExpired)
	}
	if got, want := c.Keys(pfx+"/"), []string{leader.Key()}; !slices.Equal(got, want) {
		t.Errorf("keys: got %q, want %q", got, want)
	}
}

// Observe keeps reporting across a resign/re-campaign cycle of the same
// session, and across a leader change hidden from it by a lost connection
// and a compaction.
func TestObserveAcrossCompaction(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/elect-observe"
	a, _ := newElection(t, c, pfx)
	b, _ := newElection(t, c, pfx)
	p := quietlocktest.NewProxy(t, c.Endpoint)
	observer := elect.NewElection(quietlocktest.NewSession(t, quietlocktest.NewClient(t, p.Endpoint()), ttl), pfx)
	obs := observer.Observe(t.Context())

	campaignOrFatal(t, a, "a")
	first := nextLeader(t, obs, a.Key(), "a")
	if err := a.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	campaignOrFatal(t, a, "a")
	again := nextLeader(t, obs, a.Key(), "a")
	if again.Kvs[0].CreateRevision <= first.Kvs[0].CreateRevision {
		t.Errorf("re-election not reported as a new term: create revision %d then %d",
			first.Kvs[0].CreateRevision, again.Kvs[0].CreateRevision)
	}

	p.Drop()
	if err := a.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	campaignOrFatal(t, b, "b")
	for range 5 {
		if _, err := c.Client.Put(t.Context(), "/quietlock/test/elsewhere", "x"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Client.Compact(t.Context(), c.Stats().Revision); err != nil {
		t.Fatal(err)
	}
	p.Heal()
	nextLeader(t, obs, b.Key(), "b")
}

// The observer channel closes when its context ends, and its goroutine
// with it.
func TestObserveCloses(t *testing.T) {
	c := quietlocktest.New(t)
	e, _ := newElection(t, c, "/quietlock/test/elect-close")
	ctx, cancel := context.WithCancel(t.Context())
	obs := e.Observe(ctx)
	cancel()
	for range obs {
	}
	if _, ok := <-elect.NewElection(nil, "/x").Observe(t.Context()); ok {
		t.Error("Observe on an invalid Election delivered a response")
	}
}

// Bad input gets a clear error and writes nothing.
func TestElectionBadInput(t *testing.T) {
	c := quietlocktest.New(t)
	good := quietlocktest.NewSession(t, c.NewClient(), ttl)
	closed := quietlocktest.NewSession(t, c.NewClient(), ttl)
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	base := c.Stats()
	for _, tc := range []struct {
		name string
		e    *elect.Election
		want error
	}{
		{"nil session", elect.NewElection(nil, "/quietlock/test/bad"), elect.ErrNilSession},
		{"empty prefix", elect.NewElection(good, ""), elect.ErrEmptyPrefix},
		{"closed session", elect.NewElection(closed, "/quietlock/test/bad"), concurrency.ErrSessionExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.e.Campaign(t.Context(), "v"); err != tc.want {
				t.Errorf("Campaign: got %v, want %v", err, tc.want)
			}
			wantNotLeader := tc.want
			if tc.want == concurrency.ErrSessionExpired {
				wantNotLeader = concurrency.ErrElectionNotLeader
			}
			if err := tc.e.Proclaim(t.Context(), "v"); err != wantNotLeader {
				t.Errorf("Proclaim: got %v, want %v", err, wantNotLeader)
			}
			if err := tc.e.Resign(t.Context()); tc.want != concurrency.ErrSessionExpired && err != tc.want {
				t.Errorf("Resign: got %v, want %v", err, tc.want)
			}
		})
	}
	if got := c.Stats(); got.Revision != base.Revision || got.RaftIndex != base.RaftIndex {
		t.Errorf("bad input wrote: revision %d -> %d, raft index %d -> %d", base.Revision, got.Revision, base.RaftIndex, got.RaftIndex)
	}

	// Resign twice: the second is a no-op, as etcd's.
	e := elect.NewElection(good, "/quietlock/test/twice")
	campaignOrFatal(t, e, "v")
	for range 2 {
		if err := e.Resign(t.Context()); err != nil {
			t.Errorf("Resign: %v", err)
		}
	}
	if got := c.Keys("/quietlock/test/"); len(got) != 0 {
		t.Errorf("keys left: %q", got)
	}
}

// Every method of etcd's *concurrency.Election exists on *elect.Election
// with the same signature.
func TestMirrorsEtcdElection(t *testing.T) {
	theirs := reflect.TypeFor[*concurrency.Election]()
	ours := reflect.TypeFor[*elect.Election]()
	for i := range theirs.NumMethod() {
		want := theirs.Method(i)
		got, ok := ours.MethodByName(want.Name)
		if !ok {
			t.Errorf("elect.Election has no method %s", want.Name)
			continue
		}
		g, w := got.Type, want.Type
		if g.NumIn() != w.NumIn() || g.NumOut() != w.NumOut() {
			t.Errorf("%s: got %v, want %v", want.Name, g, w)
			continue
		}
		for j := 1; j < w.NumIn(); j++ {
			if g.In(j) != w.In(j) {
				t.Errorf("%s: argument %d: got %v, want %v", want.Name, j, g.In(j), w.In(j))
			}
		}
		for j := range w.NumOut() {
			if g.Out(j) != w.Out(j) {
				t.Errorf("%s: result %d: got %v, want %v", want.Name, j, g.Out(j), w.Out(j))
			}
		}
	}
}
