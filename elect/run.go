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
	"github.com/quietlock/quietlock/internal/leaseclock"
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
	// moment the term ends; when the term ends because etcd may soon expire
	// the lease, that is before etcd can. The function should stop acting as
	// leader and return when ctx is done. Run resigns (releases the key to a
	// successor) only after it has returned; a term that ended because the
	// lease was lost or the key deleted has no key left to hold back.
	// Returning early does not end the term.
	OnStartedLeading func(ctx context.Context, term *Term)

	// OnStoppedLeading is called after OnStartedLeading has returned and Run
	// has tried to resign, with the reason the term ended (see
	// ErrLeadershipLost). If resigning failed the key goes when the
	// session's lease is revoked or expires.
	OnStoppedLeading func(term *Term, reason error)

	// OnNewLeader is called with the identity of the new leader after a
	// change of leader, this process included, and with "" when there is no
	// leader. Consecutive calls have different identities. Like
	// [Election.Observe] it reports the latest leader after each change, not
	// every term: a term that starts and ends between two reads is not
	// reported. It reports who holds the leader key
	// in etcd: this process's identity can be reported a moment before its
	// term starts, or for a term that never starts because its first lease
	// renewal failed.
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
// session and campaigns again, after a backoff if the term ended abnormally.
// Errors etcd returns are retried with a backoff, except those that cannot
// go away (permission denied, invalid argument): Run returns them.
//
// With [WithRegisterer], Run keeps these metrics, labelled with the prefix:
// quietlock_elect_is_leader, quietlock_elect_leadership_changes_total,
// quietlock_elect_acquisition_attempts_total, quietlock_elect_writes_total
// and quietlock_elect_watch_restarts_total. With [WithHealth], it reports
// whether it leads and whether it is in touch with etcd to a [Health].
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
	r := &runner{cli: cli, pfx: pfx, identity: identity, cb: cb, o: o, m: m, h: o.health}
	if err := r.h.attach(o.ttl); err != nil {
		return err
	}
	defer r.h.detach()

	var wg sync.WaitGroup
	octx, stopObserving := context.WithCancel(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.observe(octx)
	}()
	if r.h != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.h.probe(octx, cli, pfx+"/")
		}()
	}
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
		case retry.Permanent(err):
			return err
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
	h        *Health         // nil without WithHealth; its methods then do nothing
	hist     acquire.History // contention seen by past campaigns, across terms
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
		r.h.setLeader(id)
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
	r.h.renewed()
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
	// Deferred after s.Close, so it runs before: see followLease.
	defer r.h.followLease(ctx, r.cli, lease.ID)()

	e := NewElection(s, r.pfx)
	e.hist = &r.hist
	e.hooks = &acquire.Hooks{Attempt: r.m.attempts.Inc, Write: r.m.writes.Inc, WatchRestart: func(n int64) { r.m.watchRestarts.Add(float64(n)) }}
	r.o.log.Debug("elect: campaigning", "prefix", r.pfx, "identity", r.identity, "lease", fmt.Sprintf("%x", lease.ID))
	if err := e.Campaign(ctx, r.identity); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("elect: campaign: %w", err)
	}
	return r.lead(ctx, s, e)
}

// lead runs the term e has just won, until it ends. It returns nil when the
// term ended because Run's context did, and why it ended otherwise.
func (r *runner) lead(ctx context.Context, s *concurrency.Session, e *Election) error {
	t := &Term{Identity: r.identity, Key: e.Key(), Token: e.Rev(), cli: r.cli}
	margin := *r.o.margin

	// Renew the lease on a clock of our own for the whole term.
	lc := leaseclock.Clock{Client: r.cli, Lease: s.Lease(), Margin: margin, Answered: r.h.renewed}
	rctx, stopRenewing := context.WithCancel(ctx)
	renewals := make(chan leaseclock.Renewal, 1)
	var renewing sync.WaitGroup
	renewing.Add(1)
	go func() {
		defer renewing.Done()
		lc.Run(rctx, (r.o.ttl-margin)/3, renewals)
	}()
	stopRenewals := func() {
		stopRenewing()
		renewing.Wait()
	}

	// Learn how long the lease lasts at least before acting as leader: the
	// claim that won says nothing about when the lease was last renewed.
	deadline, err := r.firstDeadline(ctx, renewals)
	if err != nil {
		stopRenewals()
		r.resign(ctx, e)
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("elect: after election: %w", err)
	}

	w := watchwait.Join(r.cli, watchwait.Owner{Prefix: e.pfx, Key: t.Key, CreateRev: t.Token, Rev: e.Header().Revision})
	defer w.Leave(nil)

	tctx, end := context.WithCancelCause(context.WithoutCancel(ctx))
	defer end(nil)
	r.m.isLeader.Set(1)
	r.m.changes.Inc()
	r.h.setTerm(t.Token)
	r.o.log.Info("elect: leading", "prefix", r.pfx, "identity", r.identity, "token", t.Token)
	started := make(chan struct{})
	go func() {
		defer close(started)
		if r.cb.OnStartedLeading != nil {
			r.cb.OnStartedLeading(tctx, t)
		}
	}()

	reason := r.hold(ctx, s, w, renewals, deadline)
	// End the term first: nothing may delay telling the leader.
	end(fmt.Errorf("%w: %w", ErrLeadershipLost, reason))
	r.h.setTerm(0)
	stopRenewals()
	<-started
	r.m.isLeader.Set(0)
	r.m.changes.Inc()
	r.o.log.Info("elect: stepped down", "prefix", r.pfx, "identity", r.identity, "token", t.Token, "reason", reason)
	// Only now, with the leading callback returned, release the key.
	if !errors.Is(reason, ErrKeyDeleted) {
		r.resign(ctx, e)
	}
	if r.cb.OnStoppedLeading != nil {
		r.cb.OnStoppedLeading(t, reason)
	}
	if errors.Is(reason, ErrResigned) {
		return nil
	}
	return fmt.Errorf("elect: term %d ended: %w", t.Token, reason)
}

// firstDeadline waits for the first answered renewal of a term and returns
// the deadline it proves, or an error if none comes in time or ctx ends.
func (r *runner) firstDeadline(ctx context.Context, renewals <-chan leaseclock.Renewal) (time.Time, error) {
	give := time.NewTimer(r.o.ttl - *r.o.margin)
	defer give.Stop()
	for {
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-give.C:
			return time.Time{}, ErrLeaseDeadline
		case res := <-renewals:
			switch {
			case errors.Is(res.Err, leaseclock.ErrLeaseGone):
				return time.Time{}, concurrency.ErrSessionExpired
			case res.Err != nil:
				r.o.log.Debug("elect: lease renewal failed", "prefix", r.pfx, "err", res.Err)
			case ctx.Err() != nil:
				return time.Time{}, ctx.Err()
			case !time.Now().Before(res.Deadline):
				return time.Time{}, ErrLeaseDeadline
			default:
				return res.Deadline, nil
			}
		}
	}
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

// hold keeps the term until it ends and returns why. Each answered renewal
// moves the deadline on.
func (r *runner) hold(ctx context.Context, s *concurrency.Session, w *watchwait.Waiter, renewals <-chan leaseclock.Renewal, deadline time.Time) error {
	expire := time.NewTimer(time.Until(deadline))
	defer expire.Stop()
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
		case res := <-renewals:
			switch {
			case errors.Is(res.Err, leaseclock.ErrLeaseGone):
				return concurrency.ErrSessionExpired
			case res.Err != nil:
				r.o.log.Debug("elect: lease renewal failed", "prefix", r.pfx, "err", res.Err, "deadline", deadline)
			case res.Deadline.After(deadline):
				deadline = res.Deadline
				expire.Reset(time.Until(deadline))
			}
		}
	}
}
