package elect

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/internal/acquire"
	"github.com/quietlock/quietlock/internal/retry"
	"github.com/quietlock/quietlock/internal/watchwait"
)

// Callbacks are what [Run] calls as leadership comes and goes. Each may be
// nil. OnStartedLeading and OnStoppedLeading are called from Run's own
// goroutines, one term at a time; OnNewLeader from another goroutine of
// Run's, so it may run concurrently with the other two. Run waits for every
// callback to return before it returns.
type Callbacks struct {
	// OnStartedLeading is called when this process becomes leader, in a
	// goroutine of its own. ctx is the term's context: it is cancelled, with
	// a cause wrapping ErrLeadershipLost that context.Cause returns, the
	// moment the term ends, and before another candidate can be elected
	// unless etcd itself revoked the lease. The function should stop acting
	// as leader and return when ctx is done; the term's key is not released
	// to a successor before it has returned. Returning early does not end
	// the term.
	OnStartedLeading func(ctx context.Context, term *Term)

	// OnStoppedLeading is called after OnStartedLeading has returned and the
	// leader key has been released, with the reason the term ended (see
	// ErrLeadershipLost).
	OnStoppedLeading func(term *Term, reason error)

	// OnNewLeader is called with the identity of each new leader, this
	// process included, and with "" when there is no leader. Consecutive
	// calls have different identities.
	OnNewLeader func(identity string)
}

// Run campaigns for leadership of the election on pfx under identity, and
// calls cb's callbacks as leadership comes and goes, until ctx ends. It
// returns nil after ctx ends, having resigned if it led, so that a standby
// takes over at once, and after every callback and every goroutine of its
// own has returned. It returns an error at once for invalid input, and
// [ErrClientClosed] if cli is closed while it runs.
//
// Run keeps a session (an etcd lease with the TTL of [WithTTL]) and
// campaigns with an [Election], which writes nothing while another candidate
// leads. When it wins, it starts a term: it renews the lease on its own
// schedule, noting when each renewal was sent, and ends the term, cancelling
// its context, at the send time of the last answered renewal plus the TTL
// minus the safety margin ([WithSafetyMargin]). etcd cannot expire the lease
// before that send time plus the TTL, so a leader cut off from etcd steps
// down before anyone else can be elected, without comparing clocks across
// machines. A term also ends when the session ends, when the leader key is
// deleted by anyone, and when ctx ends. After a term, Run starts a fresh
// session and campaigns again. Transient etcd errors are retried with a
// backoff.
//
// With [WithRegisterer], Run keeps these metrics, labelled with the prefix:
// quietlock_elect_is_leader, quietlock_elect_leadership_changes_total,
// quietlock_elect_acquisition_attempts_total, quietlock_elect_writes_total
// and quietlock_elect_watch_restarts_total.
func Run(ctx context.Context, cli *clientv3.Client, pfx, identity string, cb Callbacks, opts ...Option) error {
	switch {
	case cli == nil:
		return ErrNilClient
	case pfx == "":
		return ErrEmptyPrefix
	case identity == "":
		return ErrEmptyIdentity
	}
	o, err := newOptions(opts)
	if err != nil {
		return err
	}
	m, err := newMetrics(o.reg, pfx)
	if err != nil {
		return err
	}
	r := &runner{cli: cli, pfx: pfx, identity: identity, cb: cb, o: o, m: m}

	var wg sync.WaitGroup
	octx, stopObserving := context.WithCancel(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.observe(octx)
	}()
	defer func() {
		stopObserving()
		wg.Wait()
	}()

	bo := retry.NewBackOff()
	for {
		err := r.session(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case cli.Ctx().Err() != nil:
			return ErrClientClosed
		case err != nil:
			r.o.log.Warn("elect: campaigning again after an error", "prefix", pfx, "identity", identity, "err", err)
			if retry.Sleep(ctx, bo.NextBackOff()) != nil {
				return nil
			}
		default:
			bo.Reset()
		}
	}
}

type runner struct {
	cli      *clientv3.Client
	pfx      string
	identity string
	cb       Callbacks
	o        *options
	m        *metrics
}

// observe reports leader changes to OnNewLeader until ctx ends.
func (r *runner) observe(ctx context.Context) {
	var last *string
	follow(ctx, r.cli, r.pfx+"/", func(resp *clientv3.GetResponse) {
		id := ""
		if len(resp.Kvs) > 0 {
			id = string(resp.Kvs[0].Value)
		}
		if last != nil && *last == id {
			return
		}
		last = &id
		r.o.log.Info("elect: new leader", "prefix", r.pfx, "leader", id)
		if r.cb.OnNewLeader != nil {
			r.cb.OnNewLeader(id)
		}
	}, r.m.watchRestarts.Inc)
}

// session runs one session: it campaigns and, if elected, leads one term.
func (r *runner) session(ctx context.Context) error {
	ttl := int64(r.o.ttl / time.Second)
	r.m.writes.Inc()
	lease, err := r.cli.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("elect: grant lease: %w", err)
	}
	// The session keeps the lease alive with etcd's keepalive; closing it
	// revokes the lease, bounded by the TTL.
	s, err := concurrency.NewSession(r.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(ttl)))
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), acquire.WriteTimeout)
		defer cancel()
		_, _ = r.cli.Revoke(rctx, lease.ID)
		return fmt.Errorf("elect: session: %w", err)
	}
	defer func() {
		r.m.writes.Inc()
		_ = s.Close()
	}()

	e := NewElection(s, r.pfx)
	e.hooks = &acquire.Hooks{Attempt: r.m.attempts.Inc, Write: r.m.writes.Inc}
	r.o.log.Debug("elect: campaigning", "prefix", r.pfx, "identity", r.identity, "lease", fmt.Sprintf("%x", lease.ID))
	if err := e.Campaign(ctx, r.identity); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("elect: campaign: %w", err)
	}
	return r.lead(ctx, s, e)
}

// lead runs the term e has just won, until it ends.
func (r *runner) lead(ctx context.Context, s *concurrency.Session, e *Election) error {
	t := &Term{Identity: r.identity, Key: e.Key(), Token: e.Rev(), cli: r.cli}
	lc := leaseClock{cli: r.cli, id: s.Lease(), margin: r.o.margin}

	// Learn how long the lease lasts at least before acting as leader: the
	// claim that won says nothing about when the lease was last renewed.
	first := lc.probe(ctx, time.Now().Add(r.o.ttl-r.o.margin))
	if first.err == nil && !time.Now().Before(first.deadline) {
		first.err = ErrLeaseDeadline
	}
	if first.err != nil {
		r.resign(ctx, e)
		return fmt.Errorf("elect: renew lease after election: %w", first.err)
	}

	w := watchwait.Join(r.cli, watchwait.Owner{Prefix: e.pfx, Key: t.Key, CreateRev: t.Token, Rev: e.Header().Revision})
	defer w.Leave(nil)

	tctx, end := context.WithCancelCause(context.WithoutCancel(ctx))
	defer end(nil)
	r.m.isLeader.Set(1)
	r.m.changes.Inc()
	r.o.log.Info("elect: leading", "prefix", r.pfx, "identity", r.identity, "token", t.Token)
	started := make(chan struct{})
	go func() {
		defer close(started)
		if r.cb.OnStartedLeading != nil {
			r.cb.OnStartedLeading(tctx, t)
		}
	}()

	reason := r.hold(ctx, s, w, lc, first.deadline)
	end(fmt.Errorf("%w: %w", ErrLeadershipLost, reason))
	<-started
	r.m.isLeader.Set(0)
	r.m.changes.Inc()
	r.o.log.Info("elect: stepped down", "prefix", r.pfx, "identity", r.identity, "token", t.Token, "reason", reason)
	// Only now, with the leading callback returned, may a successor start.
	if !errors.Is(reason, ErrKeyDeleted) {
		r.resign(ctx, e)
	}
	if r.cb.OnStoppedLeading != nil {
		r.cb.OnStoppedLeading(t, reason)
	}
	return nil
}

// resign releases the leader key, bounded, whatever ctx's state.
func (r *runner) resign(ctx context.Context, e *Election) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), acquire.WriteTimeout)
	defer cancel()
	r.m.writes.Inc()
	if err := e.Resign(rctx); err != nil {
		r.o.log.Warn("elect: resign failed; the key goes with the session", "prefix", r.pfx, "err", err)
	}
}

// hold keeps the term until it ends and returns why. It renews the lease
// every (TTL - margin)/3 and moves the deadline on with each answer.
func (r *runner) hold(ctx context.Context, s *concurrency.Session, w *watchwait.Waiter, lc leaseClock, deadline time.Time) error {
	expire := time.NewTimer(time.Until(deadline))
	defer expire.Stop()
	interval := (r.o.ttl - r.o.margin) / 3
	next := time.NewTimer(interval)
	defer next.Stop()

	results := make(chan probeResult, 1)
	var probing sync.WaitGroup
	pctx, stopProbing := context.WithCancel(ctx)
	defer func() {
		stopProbing()
		probing.Wait()
	}()
	inflight := false
	for {
		select {
		case <-ctx.Done():
			return ErrResigned
		case <-s.Done():
			return concurrency.ErrSessionExpired
		case <-w.Deleted():
			if err := w.Err(); err != nil {
				return err
			}
			return ErrKeyDeleted
		case <-expire.C:
			return ErrLeaseDeadline
		case <-next.C:
			if !inflight {
				inflight = true
				probing.Add(1)
				go func(until time.Time) {
					defer probing.Done()
					results <- lc.probe(pctx, until)
				}(deadline)
			}
		case res := <-results:
			inflight = false
			switch {
			case errors.Is(res.err, errLeaseGone):
				return concurrency.ErrSessionExpired
			case res.err != nil:
				r.o.log.Debug("elect: lease renewal failed", "prefix", r.pfx, "err", res.err, "deadline", deadline)
			case res.deadline.After(deadline):
				deadline = res.deadline
				expire.Reset(time.Until(deadline))
			}
			next.Reset(interval)
		}
	}
}
