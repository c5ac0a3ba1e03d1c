//go:build go1.24

package electtest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/quietlocktest"
)

// healthBody is the JSON the health and readiness handlers write.
type healthBody struct {
	Status         string   `json:"status"`
	Reason         string   `json:"reason"`
	Running        bool     `json:"running"`
	Leading        bool     `json:"leading"`
	Leader         string   `json:"leader"`
	Token          int64    `json:"token"`
	Healthy        bool     `json:"healthy"`
	LastRenewalAge *float64 `json:"last_renewal_age_seconds"`
	LastWatchAge   *float64 `json:"last_watch_age_seconds"`
}

// probe calls h and returns the status code and the decoded one-line body.
func probe(t *testing.T, h http.Handler) (int, healthBody) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	out := rec.Body.String()
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Errorf("body is not one line: %q", out)
	}
	var b healthBody
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("body %q: %v", out, err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: got %q, want application/json", ct)
	}
	switch {
	case rec.Code == http.StatusOK && (b.Status != "ok" || b.Reason != ""):
		t.Errorf("200 with status %q, reason %q", b.Status, b.Reason)
	case rec.Code == http.StatusServiceUnavailable && (b.Status == "ok" || b.Reason == ""):
		t.Errorf("503 with status %q, reason %q", b.Status, b.Reason)
	}
	return rec.Code, b
}

// wantCode checks the status code a handler answers with.
func wantCode(t *testing.T, what string, h http.Handler, want int) healthBody {
	t.Helper()
	got, b := probe(t, h)
	if got != want {
		t.Errorf("%s: got %d (%+v), want %d", what, got, b, want)
	}
	return b
}

// A leader is ready in both modes, a standby only as a participant; both are
// healthy, and both know who leads. The leader's token is its term's.
func TestHealthLeaderAndStandby(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/health"
	opts := []elect.Option{elect.WithTTL(shortTTL), elect.WithSafetyMargin(shortMargin)}
	ha, hb := elect.NewHealth(0), elect.NewHealth(0)
	a := startCandidate(t, c.NewClient(), pfx, "a", append(opts, elect.WithHealth(ha))...)
	aStart := a.await(t, "started", "")
	// The term is reported before the leading callback is called.
	if st := ha.Status(); !st.Leading || st.Token != aStart.token {
		t.Errorf("leader's status when its term started: %+v, want leading with token %d", st, aStart.token)
	}
	b := startCandidate(t, c.NewClient(), pfx, "b", append(opts, elect.WithHealth(hb))...)
	b.await(t, "leader", "a")
	quietlocktest.WaitFor(t, "both to be live participants", func() bool {
		return ha.Status().Ready(elect.ReadyParticipant) && hb.Status().Ready(elect.ReadyParticipant)
	})
	quietlocktest.WaitFor(t, "both to see a lead", func() bool {
		return ha.Status().Leader == "a" && hb.Status().Leader == "a"
	})

	body := wantCode(t, "leader, leader-only readiness", ha.ReadyHandler(elect.ReadyLeader), http.StatusOK)
	if !body.Leading || body.Leader != "a" || body.Token != aStart.token || body.LastRenewalAge == nil || body.LastWatchAge == nil {
		t.Errorf("leader's body: %+v, want leading, leader a, token %d, ages", body, aStart.token)
	}
	wantCode(t, "leader, participant readiness", ha.ReadyHandler(elect.ReadyParticipant), http.StatusOK)
	wantCode(t, "leader, health", ha.HealthHandler(), http.StatusOK)
	body = wantCode(t, "standby, leader-only readiness", hb.ReadyHandler(elect.ReadyLeader), http.StatusServiceUnavailable)
	if body.Leading || body.Leader != "a" || body.Token != 0 || body.Status != "not ready" || body.Reason != "not leading" {
		t.Errorf("standby's body: %+v, want not ready, not leading, leader a, token 0", body)
	}
	wantCode(t, "standby, participant readiness", hb.ReadyHandler(elect.ReadyParticipant), http.StatusOK)
	wantCode(t, "standby, health", hb.HealthHandler(), http.StatusOK)
	if st := hb.Status(); st.Leading || st.Token != 0 || !st.Healthy || st.Reason != "" || !st.Running {
		t.Errorf("standby's status: %+v", st)
	}

	// The leader shuts down: the standby leads with its own token, and the
	// Health of a Run that returned reports it as not running.
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	bStart := b.await(t, "started", "")
	if st := hb.Status(); !st.Leading || st.Token != bStart.token {
		t.Errorf("new leader's status: %+v, want leading with token %d", st, bStart.token)
	}
	quietlocktest.WaitFor(t, "the new leader to see itself lead", func() bool { return hb.Status().Leader == "b" })
	wantCode(t, "new leader, leader-only readiness", hb.ReadyHandler(elect.ReadyLeader), http.StatusOK)
	if st := ha.Status(); st.Running || st.Leading || st.Token != 0 || st.Healthy || st.Reason != "not running" {
		t.Errorf("status after Run returned: %+v, want not running", st)
	}
	wantCode(t, "stopped, health", ha.HealthHandler(), http.StatusServiceUnavailable)
	wantCode(t, "stopped, participant readiness", ha.ReadyHandler(elect.ReadyParticipant), http.StatusServiceUnavailable)
}

// A standby cut off from etcd becomes unhealthy, stays so while its lease
// expires, and is healthy again once the partition heals and it has a new
// lease; the leader stays healthy and leading throughout.
func TestHealthStandbyBlackholed(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/health-standby-partition"
	opts := []elect.Option{elect.WithTTL(shortTTL), elect.WithSafetyMargin(shortMargin)}
	p := quietlocktest.NewProxy(t, c.Endpoint)
	ha, hb := elect.NewHealth(0), elect.NewHealth(0)
	a := startCandidate(t, c.NewClient(), pfx, "a", append(opts, elect.WithHealth(ha))...)
	a.await(t, "started", "")
	b := startCandidate(t, quietlocktest.NewClient(t, p.Endpoint()), pfx, "b", append(opts, elect.WithHealth(hb))...)
	b.await(t, "leader", "a")
	quietlocktest.WaitFor(t, "the standby to be a live participant", func() bool { return hb.Status().Ready(elect.ReadyParticipant) })

	leaderFine := func() {
		t.Helper()
		if st := ha.Status(); !st.Healthy || !st.Leading {
			t.Fatalf("leader during the standby's partition: %+v", st)
		}
	}
	p.Blackhole()
	cut := time.Now()
	quietlocktest.WaitFor(t, "the standby to be unhealthy", func() bool {
		leaderFine()
		return !hb.Status().Healthy
	})
	st := hb.Status()
	t.Logf("standby unhealthy %v after the partition: %s", time.Since(cut).Round(time.Millisecond), st.Reason)
	if st.Leading || !st.Running || st.Reason == "" || st.Leader != "a" {
		t.Errorf("standby's status: %+v, want running, not leading, a reason, last leader a", st)
	}
	wantCode(t, "cut-off standby, health", hb.HealthHandler(), http.StatusServiceUnavailable)
	wantCode(t, "cut-off standby, participant readiness", hb.ReadyHandler(elect.ReadyParticipant), http.StatusServiceUnavailable)
	leases := func() int {
		t.Helper()
		resp, err := c.Client.Leases(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.Leases)
	}
	quietlocktest.WaitFor(t, "the standby's lease to expire", func() bool {
		leaderFine()
		return leases() == 1
	})
	if st := hb.Status(); st.Healthy {
		t.Errorf("standby without a lease: %+v, want unhealthy", st)
	}

	p.Heal()
	quietlocktest.WaitFor(t, "the standby to be healthy again", func() bool {
		leaderFine()
		return hb.Status().Ready(elect.ReadyParticipant)
	})
	wantCode(t, "healed standby, health", hb.HealthHandler(), http.StatusOK)
	leaderFine()
	// Its Run campaigns again on a new session: etcd's answer to the old
	// lease's renewal (the lease is gone) can make it healthy a moment
	// before the new lease is granted.
	quietlocktest.WaitFor(t, "the standby's new lease", func() bool { return leases() == 2 })
	for len(a.events) > 0 {
		if ev := <-a.events; ev.kind == "ended" {
			t.Errorf("the leader's term ended: %v", ev.reason)
		}
	}
}

// A leader cut off from etcd steps down early: it is not ready as leader as
// soon as its term ends, and unhealthy after the bound. The standby leads.
func TestHealthLeaderBlackholed(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/health-leader-partition"
	opts := []elect.Option{elect.WithTTL(shortTTL), elect.WithSafetyMargin(shortMargin)}
	p := quietlocktest.NewProxy(t, c.Endpoint)
	ha, hb := elect.NewHealth(0), elect.NewHealth(0)
	a := startCandidate(t, quietlocktest.NewClient(t, p.Endpoint()), pfx, "a", append(opts, elect.WithHealth(ha))...)
	a.await(t, "started", "")
	b := startCandidate(t, c.NewClient(), pfx, "b", append(opts, elect.WithHealth(hb))...)
	b.await(t, "leader", "a")
	wantCode(t, "leader, leader-only readiness", ha.ReadyHandler(elect.ReadyLeader), http.StatusOK)

	p.Blackhole()
	if ev := a.await(t, "ended", ""); !errors.Is(ev.reason, elect.ErrLeaseDeadline) {
		t.Errorf("term ended with %v, want %v", ev.reason, elect.ErrLeaseDeadline)
	}
	quietlocktest.WaitFor(t, "the old leader to be not ready", func() bool { return !ha.Status().Leading })
	wantCode(t, "old leader, leader-only readiness", ha.ReadyHandler(elect.ReadyLeader), http.StatusServiceUnavailable)
	quietlocktest.WaitFor(t, "the old leader to be unhealthy", func() bool { return !ha.Status().Healthy })
	wantCode(t, "old leader, health", ha.HealthHandler(), http.StatusServiceUnavailable)
	if st := ha.Status(); st.Token != 0 || !st.Running {
		t.Errorf("old leader's status: %+v, want running, token 0", st)
	}

	bStart := b.await(t, "started", "")
	if st := hb.Status(); !st.Leading || st.Token != bStart.token || !st.Healthy {
		t.Errorf("new leader's status: %+v, want healthy, leading with token %d", st, bStart.token)
	}

	p.Heal()
	quietlocktest.WaitFor(t, "the old leader to be a live participant again", func() bool {
		st := ha.Status()
		return st.Ready(elect.ReadyParticipant) && !st.Leading && st.Leader == "b"
	})
}

// Serving health and readiness writes nothing: the store revision and the
// raft index do not move while every handler of a leader and two standbys is
// polled, and the progress requests open no further watch stream.
func TestHealthWritesNothing(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/health-quiet"
	opts := []elect.Option{elect.WithTTL(shortTTL), elect.WithSafetyMargin(shortMargin)}
	var hs []*elect.Health
	for i, id := range []string{"leader", "standby-1", "standby-2"} {
		h := elect.NewHealth(0)
		hs = append(hs, h)
		cand := startCandidate(t, c.NewClient(), pfx, id, append(opts, elect.WithHealth(h))...)
		if i == 0 {
			cand.await(t, "started", "")
		} else {
			cand.await(t, "leader", "leader")
		}
	}
	// Each runner's client has two watch streams: one with the leader
	// observer and the campaign (or the term's guard), one with health's.
	quietlocktest.WaitFor(t, "all runners in place", func() bool {
		st := c.Stats()
		return st.Watchers == 3*3 && st.WatchStreams == 3*2
	})
	base := c.Stats()
	polls := 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, h := range hs {
			for _, hh := range []http.Handler{h.HealthHandler(), h.ReadyHandler(elect.ReadyLeader), h.ReadyHandler(elect.ReadyParticipant)} {
				probe(t, hh)
				polls++
			}
		}
	}
	after := c.Stats()
	if after.Revision != base.Revision || after.RaftIndex != base.RaftIndex {
		t.Errorf("%d polls wrote: revision %d -> %d, raft index %d -> %d", polls, base.Revision, after.Revision, base.RaftIndex, after.RaftIndex)
	}
	if after.Watchers != base.Watchers || after.WatchStreams != base.WatchStreams {
		t.Errorf("watchers %d -> %d, watch streams %d -> %d", base.Watchers, after.Watchers, base.WatchStreams, after.WatchStreams)
	}
	for i, h := range hs {
		if st := h.Status(); !st.Healthy || st.Leading != (i == 0) {
			t.Errorf("runner %d: %+v", i, st)
		}
	}
}

// WithHealth rejects a nil Health and bounds that do not suit the TTL, and a
// Health serves one Run at a time, one after another.
func TestHealthBadInput(t *testing.T) {
	c := quietlocktest.New(t)
	cli := c.NewClient()
	for _, tc := range []struct {
		name string
		opts []elect.Option
	}{
		{"nil health", []elect.Option{elect.WithHealth(nil)}},
		{"negative bound", []elect.Option{elect.WithHealth(elect.NewHealth(-time.Second))}},
		{"bound too short", []elect.Option{elect.WithTTL(3 * time.Second), elect.WithHealth(elect.NewHealth(time.Second + 999*time.Millisecond))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := elect.Run(t.Context(), cli, "/p", "a", elect.Callbacks{}, tc.opts...); !errors.Is(err, elect.ErrBadOption) {
				t.Errorf("Run: got %v, want %v", err, elect.ErrBadOption)
			}
		})
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("ReadyHandler(0) did not panic")
			}
		}()
		new(elect.Health).ReadyHandler(0)
	}()

	var h elect.Health // the zero value: the bound is the TTL
	if st := h.Status(); st.Running || st.Healthy || st.Reason != "not running" || st.Ready(elect.ReadyParticipant) || st.Ready(elect.ReadyLeader) {
		t.Errorf("status before Run: %+v", st)
	}
	for round := range 2 {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			done <- elect.Run(ctx, cli, "/p", "a", elect.Callbacks{}, elect.WithTTL(shortTTL), elect.WithHealth(&h))
		}()
		quietlocktest.WaitFor(t, "the Run to lead", func() bool { return h.Status().Leading })
		if err := elect.Run(t.Context(), cli, "/p", "b", elect.Callbacks{}, elect.WithHealth(&h)); !errors.Is(err, elect.ErrBadOption) {
			t.Errorf("round %d: a second Run on the Health: got %v, want %v", round, err, elect.ErrBadOption)
		}
		if st := h.Status(); !st.Running || !st.Leading {
			t.Errorf("round %d: the second Run disturbed the first's status: %+v", round, st)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("round %d: Run: %v", round, err)
		}
		if st := h.Status(); st.Running || st.Leading {
			t.Errorf("round %d: after Run returned: %+v", round, st)
		}
	}
}

// A primary/standby service serves /readyz for its load balancer (the leader
// only) and /healthz for its supervisor.
func Example_health() {
	endpoint, stop, err := quietlocktest.StartInTempDir()
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	cli := newClient(endpoint)
	defer cli.Close()

	h := elect.NewHealth(0) // unhealthy after a TTL without an answer from etcd
	mux := http.NewServeMux()
	mux.Handle("/readyz", h.ReadyHandler(elect.ReadyLeader))
	mux.Handle("/healthz", h.HealthHandler())

	ctx, cancel := context.WithCancel(context.Background())
	leading := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- elect.Run(ctx, cli, "/my-service/leader", "node-1", elect.Callbacks{
			OnStartedLeading: func(ctx context.Context, term *elect.Term) {
				close(leading)
				<-ctx.Done()
			},
		}, elect.WithHealth(h))
	}()
	<-leading
	for _, path := range []string{"/readyz", "/healthz"} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		fmt.Println(path, rec.Code)
	}
	st := h.Status()
	fmt.Println("leading:", st.Leading, "token:", st.Token)
	cancel()
	<-done
	fmt.Println("after Run:", h.Status().Reason)
	// Output:
	// /readyz 200
	// /healthz 200
	// leading: true token: 2
	// after Run: not running
}
