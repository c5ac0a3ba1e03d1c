//go:build go1.24

package electtest_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/quietlocktest"
)

// Short TTLs make partition and crash tests fast; etcd's embedded minimum
// is 2 s.
const (
	shortTTL    = 2 * time.Second
	shortMargin = 500 * time.Millisecond
)

// event is one callback, as recorded by a candidate.
type event struct {
	kind   string // "started", "ended" (term ctx done), "returned", "stopped", "leader"
	id     string // identity of the candidate, or of the new leader for "leader"
	token  int64
	reason error
	at     time.Time
}

// candidate runs elect.Run and records its callbacks.
type candidate struct {
	id     string
	events chan event
	cancel context.CancelFunc
	done   chan error // Run's result
}

func startCandidate(t *testing.T, cli *clientv3.Client, pfx, id string, opts ...elect.Option) *candidate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{id: id, events: make(chan event, 1000), cancel: cancel, done: make(chan error, 1)}
	cb := elect.Callbacks{
		OnStartedLeading: func(ctx context.Context, term *elect.Term) {
			c.events <- event{kind: "started", id: id, token: term.Token, at: time.Now()}
			<-ctx.Done()
			c.events <- event{kind: "ended", id: id, token: term.Token, reason: context.Cause(ctx), at: time.Now()}
			c.events <- event{kind: "returned", id: id, token: term.Token, at: time.Now()}
		},
		OnStoppedLeading: func(term *elect.Term, reason error) {
			c.events <- event{kind: "stopped", id: id, token: term.Token, reason: reason, at: time.Now()}
		},
		OnNewLeader: func(leader string) {
			c.events <- event{kind: "leader", id: leader, at: time.Now()}
		},
	}
	go func() { c.done <- elect.Run(ctx, cli, pfx, id, cb, opts...) }()
	t.Cleanup(func() { c.stop(t) })
	return c
}

// stop cancels Run and waits for it to return.
func (c *candidate) stop(t *testing.T) error {
	t.Helper()
	c.cancel()
	select {
	case err, ok := <-c.done:
		if ok {
			close(c.done)
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("Run of %s did not return", c.id)
		return nil
	}
}

// await returns the next event of the given kind (and leader identity, for
// "leader"), skipping others.
func (c *candidate) await(t *testing.T, kind, leader string) event {
	t.Helper()
	for {
		select {
		case ev := <-c.events:
			if ev.kind == kind && (kind != "leader" || ev.id == leader) {
				return ev
			}
		case <-t.Context().Done():
			t.Fatalf("%s: no %q event", c.id, kind)
		}
	}
}

// Cancelling the leader's Run ends its term, waits for its callback,
// resigns, and the standby leads at once. A term lost another way is
// followed by a new campaign.
func TestRunHandover(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/run-handover"
	reg := prometheus.NewRegistry()
	a := startCandidate(t, c.NewClient(), pfx, "a", elect.WithRegisterer(reg))
	aStart := a.await(t, "started", "")
	b := startCandidate(t, c.NewClient(), pfx, "b", elect.WithTTL(shortTTL), elect.WithSafetyMargin(shortMargin))
	b.await(t, "leader", "a")
	if v := metric(t, reg, "quietlock_elect_is_leader"); v != 1 {
		t.Errorf("is_leader while leading: got %v, want 1", v)
	}
	if v := metric(t, reg, "quietlock_elect_writes_total"); v != 2 {
		t.Errorf("writes to become leader: got %v, want 2 (lease grant, claim)", v)
	}

	if err := a.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Run returned only after the callback had: its events are all there.
	got := []string{}
	for len(a.events) > 0 {
		if ev := <-a.events; ev.kind != "leader" {
			got = append(got, ev.kind)
			if ev.kind == "stopped" && (!errors.Is(ev.reason, elect.ErrResigned)) {
				t.Errorf("reason: got %v, want %v", ev.reason, elect.ErrResigned)
			}
			if ev.kind == "ended" && !errors.Is(ev.reason, elect.ErrLeadershipLost) {
				t.Errorf("term context cause: got %v, want %v", ev.reason, elect.ErrLeadershipLost)
			}
		}
	}
	if want := []string{"ended", "returned", "stopped"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("a's events after stop: got %v, want %v", got, want)
	}
	if v := metric(t, reg, "quietlock_elect_is_leader"); v != 0 {
		t.Errorf("is_leader after stepping down: got %v, want 0", v)
	}
	if v := metric(t, reg, "quietlock_elect_leadership_changes_total"); v != 2 {
		t.Errorf("leadership changes: got %v, want 2", v)
	}
	bStart := b.await(t, "started", "")
	if bStart.token <= aStart.token {
		t.Errorf("tokens: a %d, then b %d", aStart.token, bStart.token)
	}

	// Someone deletes b's key: b's term ends, and b campaigns again and,
	// alone, wins a new term.
	resp, err := c.Client.Get(t.Context(), pfx+"/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("keys: %v, %v", resp, err)
	}
	if _, err := c.Client.Delete(t.Context(), string(resp.Kvs[0].Key)); err != nil {
		t.Fatal(err)
	}
	if ev := b.await(t, "stopped", ""); !errors.Is(ev.reason, elect.ErrKeyDeleted) {
		t.Errorf("reason: got %v, want %v", ev.reason, elect.ErrKeyDeleted)
	}
	if again := b.await(t, "started", ""); again.token <= bStart.token {
		t.Errorf("new term's token %d not above %d", again.token, bStart.token)
	}
	if err := b.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	quietlocktest.WaitFor(t, "no keys left", func() bool { return len(c.Keys(pfx+"/")) == 0 })
}

// metric returns the value of the gauge or counter name in reg.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// Standby runners write nothing while a leader leads.
func TestRunStandbysWriteNothing(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/run-idle"
	leader := startCandidate(t, c.NewClient(), pfx, "leader")
	leader.await(t, "started", "")
	var standbys []*candidate
	for i := range 4 {
		s := startCandidate(t, c.NewClient(), pfx, fmt.Sprintf("standby-%d", i))
		s.await(t, "leader", "leader")
		standbys = append(standbys, s)
	}
	// Each runner watches the leader's key twice: to report leaders, and to
	// wait for (or, leading, to guard) its term. Once all are in place
	// nothing may be written.
	quietlocktest.WaitFor(t, "standbys waiting", func() bool { return c.Stats().Watchers == 2+2*4 })
	base := c.Stats()
	time.Sleep(3 * time.Second)
	after := c.Stats()
	if after.Revision != base.Revision || after.RaftIndex != base.RaftIndex {
		t.Errorf("standbys wrote: revision %d -> %d, raft index %d -> %d", base.Revision, after.Revision, base.RaftIndex, after.RaftIndex)
	}
	if got := len(c.Keys(pfx + "/")); got != 1 {
		t.Errorf("keys: got %d, want 1", got)
	}
}

// A leader that crashes (its client closes, nothing resigns) is replaced
// once its lease expires: within the TTL plus a generous bound.
func TestRunCrashFailover(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/run-crash"
	cli, err := clientv3.New(quietlocktest.ClientConfig(c.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	a := startCandidate(t, cli, pfx, "a", elect.WithTTL(shortTTL), elect.WithSafetyMargin(shortMargin))
	a.await(t, "started", "")
	b := startCandidate(t, c.NewClient(), pfx, "b", elect.WithTTL(shortTTL), elect.WithSafetyMargin(shortMargin))
	b.await(t, "leader", "a")

	crashed := time.Now()
	cli.Close()
	if err := <-a.done; !errors.Is(err, elect.ErrClientClosed) {
		t.Errorf("Run after its client closed: got %v, want %v", err, elect.ErrClientClosed)
	}
	close(a.done)
	ev := b.await(t, "started", "")
	if took := ev.at.Sub(crashed); took > shortTTL+5*time.Second {
		t.Errorf("failover took %v, want at most the TTL %v plus 5 s", took, shortTTL)
	} else {
		t.Logf("crash failover: %v (TTL %v)", took, shortTTL)
	}
}

// A leader cut off from etcd (its traffic black-holed) learns that it lost
// leadership before anyone else can win: its term's context is cancelled
// strictly before the next leader's term starts, on the same clock.
func TestRunPartitionStepsDownFirst(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/run-partition"
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	opts := []elect.Option{elect.WithTTL(shortTTL), elect.WithSafetyMargin(shortMargin)}
	p := quietlocktest.NewProxy(t, c.Endpoint)
	aCli := quietlocktest.NewClient(t, p.Endpoint())
	bCli := c.NewClient()
	var worst time.Duration = -1 << 63
	for round := range rounds {
		a := startCandidate(t, aCli, pfx, "a", opts...)
		a.await(t, "started", "")
		b := startCandidate(t, bCli, pfx, "b", opts...)
		b.await(t, "leader", "a")

		p.Blackhole()
		aEnd := a.await(t, "ended", "")
		bStart := b.await(t, "started", "")
		if !errors.Is(aEnd.reason, elect.ErrLeaseDeadline) {
			t.Errorf("round %d: a's term ended with %v, want %v", round, aEnd.reason, elect.ErrLeaseDeadline)
		}
		if !aEnd.at.Before(bStart.at) {
			t.Errorf("round %d: a's term ended at %v, after b's began at %v", round, aEnd.at, bStart.at)
		}
		if gap := aEnd.at.Sub(bStart.at); gap > worst {
			worst = gap
		}
		p.Heal()
		for _, cand := range []*candidate{b, a} {
			if err := cand.stop(t); err != nil {
				t.Fatalf("round %d: Run of %s: %v", round, cand.id, err)
			}
		}
		quietlocktest.WaitFor(t, "no keys left", func() bool { return len(c.Keys(pfx+"/")) == 0 })
	}
	t.Logf("%d rounds: the old leader stepped down at least %v before the new one started", rounds, -worst)
}

// Run rejects bad input at once.
func TestRunBadInput(t *testing.T) {
	c := quietlocktest.New(t)
	cli := c.NewClient()
	base := c.Stats()
	for _, tc := range []struct {
		name string
		cli  *clientv3.Client
		pfx  string
		id   string
		opts []elect.Option
		want error
	}{
		{"nil client", nil, "/p", "a", nil, elect.ErrNilClient},
		{"empty prefix", cli, "", "a", nil, elect.ErrEmptyPrefix},
		{"empty identity", cli, "/p", "", nil, elect.ErrEmptyIdentity},
		{"nil option", cli, "/p", "a", []elect.Option{nil}, elect.ErrBadOption},
		{"zero TTL", cli, "/p", "a", []elect.Option{elect.WithTTL(0)}, elect.ErrBadOption},
		{"negative TTL", cli, "/p", "a", []elect.Option{elect.WithTTL(-time.Second)}, elect.ErrBadOption},
		{"fractional TTL", cli, "/p", "a", []elect.Option{elect.WithTTL(1500 * time.Millisecond)}, elect.ErrBadOption},
		{"negative margin", cli, "/p", "a", []elect.Option{elect.WithSafetyMargin(-1)}, elect.ErrBadOption},
		{"zero margin", cli, "/p", "a", []elect.Option{elect.WithSafetyMargin(0)}, elect.ErrBadOption},
		{"margin too large", cli, "/p", "a", []elect.Option{elect.WithTTL(2 * time.Second), elect.WithSafetyMargin(time.Second)}, elect.ErrBadOption},
		{"nil logger", cli, "/p", "a", []elect.Option{elect.WithLogger(nil)}, elect.ErrBadOption},
		{"nil registerer", cli, "/p", "a", []elect.Option{elect.WithRegisterer(nil)}, elect.ErrBadOption},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := elect.Run(t.Context(), tc.cli, tc.pfx, tc.id, elect.Callbacks{}, tc.opts...); !errors.Is(err, tc.want) {
				t.Errorf("Run: got %v, want %v", err, tc.want)
			}
		})
	}
	if got := c.Stats(); got.Revision != base.Revision || got.RaftIndex != base.RaftIndex {
		t.Errorf("bad input wrote: revision %d -> %d, raft index %d -> %d", base.Revision, got.Revision, base.RaftIndex, got.RaftIndex)
	}
	// A logger and nil callbacks are fine.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- elect.Run(ctx, cli, "/p", "a", elect.Callbacks{}, elect.WithLogger(slog.New(slog.DiscardHandler)))
	}()
	quietlocktest.WaitFor(t, "a leader", func() bool { return len(c.Keys("/p/")) == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// With password authentication on, a leader's lease renewals cost etcd
// nothing: they share one stream, authenticated once, so the raft index does
// not move while the leader leads.
func TestRunLeaderWritesNothingWithAuth(t *testing.T) {
	c := quietlocktest.New(t)
	ctx := t.Context()
	for _, step := range []func() error{
		func() error { _, err := c.Client.RoleAdd(ctx, "root"); return err },
		func() error { _, err := c.Client.UserAdd(ctx, "root", "secret"); return err },
		func() error { _, err := c.Client.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.Client.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cfg := quietlocktest.ClientConfig(c.Endpoint)
	cfg.Username, cfg.Password = "root", "secret"
	newCli := func() *clientv3.Client {
		cli, err := clientv3.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	admin := newCli()
	const pfx = "/quietlock/test/run-auth"
	a := startCandidate(t, newCli(), pfx, "a", elect.WithTTL(shortTTL), elect.WithSafetyMargin(shortMargin))
	a.await(t, "started", "")
	// Let the renewals settle into their rhythm, then count.
	time.Sleep(time.Second)
	status := func() int64 {
		st, err := admin.Status(ctx, c.Endpoint[len("http://"):])
		if err != nil {
			t.Fatal(err)
		}
		return int64(st.RaftAppliedIndex)
	}
	before := status()
	time.Sleep(3 * time.Second) // about 6 renewals at this TTL and margin
	// Renewals that each authenticated, or each opened a stream that did,
	// would cost one raft entry apiece: about 6. One entry is tolerated: a
	// client of the test can re-authenticate once (an Authenticate is a
	// raft entry) when the race detector and the parallel packages slow
	// it down; seen once in ten runs of go test -race ./....
	if got := status() - before; got > 1 {
		t.Errorf("raft entries while leading with auth over 3 s: got %d, want at most 1", got)
	} else {
		t.Logf("raft entries while leading with auth over 3 s: %d", got)
	}
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
}
