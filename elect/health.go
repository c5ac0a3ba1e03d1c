package elect

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/quietlock/quietlock/internal/retry"
	"github.com/quietlock/quietlock/internal/watchwait"
)

// Health is the state of a [Run], for health and readiness checks: whether
// it leads, who leads, and whether it is healthy, that is, still in touch
// with etcd and so able to lead or to take over. Give it to Run with
// [WithHealth]; read it with [Health.Status] or serve it with
// [Health.ReadyHandler] and [Health.HealthHandler].
//
// # The health rule
//
// A running Run is healthy while etcd has answered both of these within the
// bound (see [NewHealth]):
//
//   - a grant or renewal of this process's lease. The session renews its
//     lease every third of the TTL, leader or standby, and a leader renews it
//     on its own clock as well; Run notes each answer.
//   - a request for the progress of a watch. A standby's watches are
//     silent while the leader leads, so Run keeps a watch of its own, through
//     the same client, and asks etcd for a progress notification on it every
//     quarter of the bound; any answer counts. The watch is on a gRPC stream
//     of its own: etcd holds back progress notifications on a stream where
//     any watch waits for a revision not yet written, and the campaign's and
//     the observer's do while nothing is written. Like theirs, it requires
//     the etcd member to have a leader.
//
// Run's start counts as an answer to both, so a Run is healthy for one bound
// while it first connects. A Run that cannot reach etcd (its connection is
// lost or black-holed, its etcd member has no leader, its session expired
// and it cannot get a new lease) becomes unhealthy once the bound has passed,
// whether it leads or stands by; it is healthy again as soon as etcd answers
// both again. A Run that has returned, or has not started, is unhealthy.
//
// Healthy does not mean that this process will win the next election, only
// that it is taking part: its lease is alive and its watch would tell it
// when the leader goes.
// Readiness is kept apart from health: see [Readiness].
//
// # What it costs etcd
//
// Nothing is written. The lease answers are those of renewals that Run sends
// anyway. The progress requests are answered by the etcd member from memory.
// The watch adds one server watcher per Run, and one watch stream per client
// (Runs on one client share it); it filters out every event.
//
// The zero value is ready to use, with the default bound. A Health reports on
// one Run at a time, and can be given to Runs one after another (say, a loop
// that runs Run again after each resignation); between them it reports "not
// running". A Health is safe for concurrent use.
type Health struct {
	maxSilence time.Duration

	mu          sync.Mutex
	running     bool
	bound       time.Duration // maxSilence, or the TTL of the running Run
	started     time.Time     // when the running Run started
	token       int64         // of the current term; 0 when not leading
	leader      string        // as last observed
	lastRenewal time.Time
	lastWatch   time.Time
}

// NewHealth returns a Health whose Run is unhealthy once etcd has not
// answered it for longer than maxSilence (see [Health] for the exact rule).
// A maxSilence of 0 means the Run's TTL ([WithTTL], default [DefaultTTL]).
// [Run] returns an error wrapping [ErrBadOption] if maxSilence is negative,
// or shorter than a third of its TTL plus one second: the session renews the
// lease every third of the TTL, and etcd's client may send each renewal up to
// half a second late, so a shorter bound would report a working Run as
// unhealthy.
func NewHealth(maxSilence time.Duration) *Health {
	return &Health{maxSilence: maxSilence}
}

// Status is a [Health]'s report on its Run at one moment.
type Status struct {
	// Running is true from the start of the Run until it returns.
	Running bool

	// Leading is true while this process's term lasts: from just before
	// OnStartedLeading is called until the term's context is cancelled.
	Leading bool

	// Token is the current term's fencing token ([Term.Token]) while
	// Leading, and 0 otherwise.
	Token int64

	// Leader is the identity of the leader as last observed, as reported to
	// OnNewLeader: "" when there is none, or before the first observation.
	// A Run cut off from etcd keeps reporting the last leader it saw.
	Leader string

	// LastRenewal is when the answer to the latest grant or renewal of this
	// process's lease arrived, on this process's clock; zero if none has
	// since the Run started.
	LastRenewal time.Time

	// LastWatch is when etcd last answered a progress request, or created
	// the watch, of the Run's health watch; zero if it has not since the Run
	// started.
	LastWatch time.Time

	// Healthy is true while the Run is running and etcd has answered it
	// within the bound (see [Health]).
	Healthy bool

	// Reason says, in one line, why the Run is not Healthy; "" when it is.
	Reason string
}

// Readiness says what [Status.Ready] and [Health.ReadyHandler] count as
// ready.
type Readiness int

const (
	// ReadyLeader is ready only while this process leads (Status.Leading),
	// for services that route traffic to the leader only. It does not depend
	// on Healthy: a leader's term ends by itself, before etcd could elect
	// another, when its renewals stop being answered.
	ReadyLeader Readiness = iota + 1

	// ReadyParticipant is ready while this process is a live participant,
	// leader or standby: its Run is Healthy and etcd has answered it, on
	// both counts, since the Run started.
	ReadyParticipant
)

// Ready reports whether s counts as ready under r. It is false for an
// unknown Readiness.
func (s Status) Ready(r Readiness) bool {
	switch r {
	case ReadyLeader:
		return s.Leading
	case ReadyParticipant:
		return s.Healthy && !s.LastRenewal.IsZero() && !s.LastWatch.IsZero()
	}
	return false
}

// Status returns the Run's state now.
func (h *Health) Status() Status { return h.status(time.Now()) }

func (h *Health) status(now time.Time) Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := Status{
		Running:     h.running,
		Leading:     h.token != 0,
		Token:       h.token,
		Leader:      h.leader,
		LastRenewal: h.lastRenewal,
		LastWatch:   h.lastWatch,
	}
	renewal, watch := silence(now, h.started, h.lastRenewal), silence(now, h.started, h.lastWatch)
	switch {
	case !h.running:
		s.Reason = "not running"
	case renewal > h.bound:
		s.Reason = fmt.Sprintf("etcd has answered no lease grant or renewal for %v (bound %v)", renewal.Round(time.Millisecond), h.bound)
	case watch > h.bound:
		s.Reason = fmt.Sprintf("etcd has answered no watch progress request for %v (bound %v)", watch.Round(time.Millisecond), h.bound)
	default:
		s.Healthy = true
	}
	return s
}

// silence is how long before now the later of start and last was.
func silence(now, start, last time.Time) time.Duration {
	if last.Before(start) {
		last = start
	}
	return now.Sub(last)
}

// HealthHandler returns a handler that answers every request with 200 while
// the Run is Healthy and 503 otherwise, with a one-line JSON body (see
// [Health.ReadyHandler]).
func (h *Health) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		now := time.Now()
		s := h.status(now)
		serve(w, now, s, s.Healthy, "unhealthy", s.Reason)
	})
}

// ReadyHandler returns a handler that answers every request with 200 while
// the Run is ready under r and 503 otherwise. It panics if r is not a
// Readiness declared here.
//
// The body of both handlers is one line of JSON: "status" ("ok", "not
// ready" or "unhealthy"), "reason" (why not, omitted on 200), "running",
// "leading", "leader", "token", "healthy", and
// "last_renewal_age_seconds" and "last_watch_age_seconds" (how long ago
// LastRenewal and LastWatch were; null when zero).
func (h *Health) ReadyHandler(r Readiness) http.Handler {
	if r != ReadyLeader && r != ReadyParticipant {
		panic(fmt.Sprintf("elect: ReadyHandler with unknown Readiness %d", r))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		now := time.Now()
		s := h.status(now)
		reason := ""
		switch {
		case s.Ready(r):
		case r == ReadyLeader:
			reason = "not leading"
		case !s.Healthy:
			reason = s.Reason
		default:
			reason = "etcd has not answered yet"
		}
		serve(w, now, s, s.Ready(r), "not ready", reason)
	})
}

// body is what the handlers write.
type body struct {
	Status         string   `json:"status"`
	Reason         string   `json:"reason,omitempty"`
	Running        bool     `json:"running"`
	Leading        bool     `json:"leading"`
	Leader         string   `json:"leader"`
	Token          int64    `json:"token"`
	Healthy        bool     `json:"healthy"`
	LastRenewalAge *float64 `json:"last_renewal_age_seconds"`
	LastWatchAge   *float64 `json:"last_watch_age_seconds"`
}

func serve(w http.ResponseWriter, now time.Time, s Status, ok bool, failed, reason string) {
	b := body{Status: "ok", Running: s.Running, Leading: s.Leading, Leader: s.Leader, Token: s.Token, Healthy: s.Healthy,
		LastRenewalAge: age(now, s.LastRenewal), LastWatchAge: age(now, s.LastWatch)}
	code := http.StatusOK
	if !ok {
		b.Status, b.Reason, code = failed, reason, http.StatusServiceUnavailable
	}
	line, _ := json.Marshal(b) // cannot fail: plain fields only
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(line, '\n'))
}

func age(now, t time.Time) *float64 {
	if t.IsZero() {
		return nil
	}
	a := now.Sub(t).Seconds()
	return &a
}

// attach starts a report on a Run with the given TTL. It fails if h is
// reporting on another Run.
func (h *Health) attach(ttl time.Duration) error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running {
		return fmt.Errorf("%w: the Health is in use by another Run", ErrBadOption)
	}
	h.running, h.bound, h.started = true, h.boundFor(ttl), time.Now()
	h.token, h.leader, h.lastRenewal, h.lastWatch = 0, "", time.Time{}, time.Time{}
	return nil
}

// detach ends the report on the Run; the last observations stay readable.
func (h *Health) detach() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.running, h.token = false, 0
}

// boundFor is the bound for a Run with the given TTL.
func (h *Health) boundFor(ttl time.Duration) time.Duration {
	if h.maxSilence == 0 {
		return ttl
	}
	return h.maxSilence
}

// check validates the bound for a Run with the given TTL.
func (h *Health) check(ttl time.Duration) error {
	switch b := h.boundFor(ttl); {
	case h.maxSilence < 0:
		return fmt.Errorf("%w: health bound %v is negative", ErrBadOption, h.maxSilence)
	case b < ttl/3+time.Second:
		return fmt.Errorf("%w: health bound %v is less than a third of the TTL %v plus 1s", ErrBadOption, b, ttl)
	}
	return nil
}

// setTerm notes the token of the term that starts, or 0 when it ends.
func (h *Health) setTerm(token int64) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.token = token
}

// setLeader notes the identity of the leader observed.
func (h *Health) setLeader(id string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.leader = id
}

// renewed notes an answered lease grant or renewal.
func (h *Health) renewed() {
	if h == nil {
		return
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastRenewal = now
}

// watched notes an answer on the health watch.
func (h *Health) watched() {
	if h == nil {
		return
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastWatch = now
}

// followLease notes every answer to the session's keepalives of lease id,
// until stop is called; stop returns once its goroutine has exited. Call
// stop before closing the session: the client keeps renewing a lease while
// any of its keepalive channels is open.
func (h *Health) followLease(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) (stop func()) {
	if h == nil {
		return func() {}
	}
	kctx, cancel := context.WithCancel(ctx)
	// A second channel on the session's keepalive: the client sends one
	// renewal per lease, however many channels listen, and answers each.
	ch, err := cli.KeepAlive(kctx, id)
	if err != nil {
		// The client is closing; Run notices on its own.
		cancel()
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range ch {
			h.renewed()
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// probeKey is the gRPC metadata that gives the health watch a stream of its
// own (see [Health]); etcd ignores it.
const probeKey = "quietlock-elect-probe"

// probeContext is the context of the health watch and of its progress
// requests: the client picks a watch stream by the context's metadata.
func probeContext() context.Context {
	return metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(context.Background()), probeKey, "health")
}

// probe keeps a watch on key on a stream of its own, and asks etcd for a
// progress notification on that stream every quarter of the bound, noting
// each answer, until ctx ends or the client is closed.
func (h *Health) probe(ctx context.Context, cli *clientv3.Client, key string) {
	h.mu.Lock()
	interval := h.bound / 4
	h.mu.Unlock()
	bo := retry.NewBackOff()
	for {
		if h.probeWatch(ctx, cli, key, interval) {
			bo.Reset()
		}
		if ctx.Err() != nil || cli.Ctx().Err() != nil || retry.Sleep(ctx, bo.NextBackOff()) != nil {
			return
		}
	}
}

// probeWatch runs one watch of probe's until it fails or ctx ends, and
// reports whether etcd answered on it.
func (h *Health) probeWatch(ctx context.Context, cli *clientv3.Client, key string, interval time.Duration) (answered bool) {
	wctx, cancel := context.WithCancel(probeContext())
	defer cancel()
	// As in watchwait.Open: the client leaves a new stream open, with no
	// watch, if a Watch call's context ends before the stream took the
	// request. So when ctx ends during the call, let it finish first, for at
	// most watchwait.SubmitGrace (it is slow only while etcd is unreachable).
	submitted, released := make(chan struct{}), make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(released)
		t := time.NewTimer(watchwait.SubmitGrace)
		defer t.Stop()
		select {
		case <-submitted:
		case <-t.C:
		}
		cancel()
	})
	defer func() {
		if !stopAfter() {
			<-released
		}
	}()
	// Every event is filtered out: only the creation of the watch and the
	// progress notifications come back.
	wch := cli.Watch(wctx, key, clientv3.WithPrefix(), clientv3.WithCreatedNotify(), clientv3.WithFilterPut(), clientv3.WithFilterDelete())
	close(submitted)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return answered
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				return answered
			}
			answered = true
			h.watched()
		case <-tick.C:
			// Ask only once etcd has created this watch: the client opens
			// a stream for a progress request that finds none, and such a
			// stream, without watches, is never closed.
			if !answered {
				continue
			}
			pctx, cancel := context.WithTimeout(probeContext(), interval)
			_ = cli.RequestProgress(pctx) // a lost request is made up for by the next
			cancel()
		}
	}
}
