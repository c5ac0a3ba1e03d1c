package shard

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/internal/leaseclock"
	"github.com/quietlock/quietlock/internal/retry"
)

// Callbacks are what a [Runner] calls as the leadership of its shards comes
// and goes. Each may be nil. For one shard, OnStartedLeading and
// OnStoppedLeading are called one term at a time; different shards' run
// concurrently. OnNewLeader is called from one goroutine of the runner's,
// one call at a time, concurrently with the others. Run waits for every
// callback to return before it returns.
type Callbacks struct {
	// OnStartedLeading is called when this process starts to lead shard, in
	// a goroutine of its own. ctx is the term's context: it is cancelled,
	// with a cause wrapping elect.ErrLeadershipLost that context.Cause
	// returns, the moment the term ends; when it ends because etcd may soon
	// expire the process's lease, that is before etcd can. The function
	// should stop acting as the shard's leader and return when ctx is done.
	// The runner hands the shard over (deletes its leader key) only after it
	// has returned. Returning early does not end the term. Fence every write
	// made as leader with term (see elect.Term).
	OnStartedLeading func(ctx context.Context, shard string, term *elect.Term)

	// OnStoppedLeading is called after OnStartedLeading has returned and the
	// runner has tried to hand the shard over, with the reason the term
	// ended: [ErrRebalanced], [ErrRemoved], elect.ErrResigned (Run's context
	// ended), elect.ErrLeaseDeadline, elect.ErrKeyDeleted or
	// concurrency.ErrSessionExpired.
	OnStoppedLeading func(shard string, term *elect.Term, reason error)

	// OnNewLeader is called with the identity of a shard's new leader after
	// a change of leader, this process included, and with "" when the shard
	// has none. Like elect.Callbacks.OnNewLeader it reports the latest state
	// of each shard after each change, not every term.
	OnNewLeader func(shard, identity string)
}

// Runner leads this process's share of many shards with one lease, among
// the processes that run a Runner on the same prefix (see the package
// documentation). Make one with [New], give it shards with [Runner.Add],
// and call [Runner.Run]. Its methods are safe for concurrent use.
type Runner struct {
	cli      *clientv3.Client
	pfx      string // with the trailing "/"
	identity string
	cb       Callbacks
	o        *options
	m        *metrics

	running atomic.Bool
	kick    chan struct{} // the shards changed

	mu      sync.Mutex
	shards  map[string]bool
	leading map[string]*elect.Term // shards this process leads now
	leaders map[string]string      // shard -> its leader's identity, as last seen
}

// New returns a Runner on prefix pfx for this process, known to the others
// as identity (the value of its keys). It makes no request. It returns an
// error for a nil client, an empty prefix or identity, and invalid options.
//
// With [WithRegisterer], the runner keeps these metrics, labelled with the
// prefix: quietlock_shard_leading, quietlock_shard_members,
// quietlock_shard_terms_total, quietlock_shard_writes_total and
// quietlock_shard_watch_restarts_total.
func New(cli *clientv3.Client, pfx, identity string, cb Callbacks, opts ...Option) (*Runner, error) {
	switch {
	case cli == nil:
		return nil, ErrNilClient
	case pfx == "":
		return nil, ErrEmptyPrefix
	case identity == "":
		return nil, ErrEmptyIdentity
	}
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(o.reg, pfx)
	if err != nil {
		return nil, err
	}
	return &Runner{
		cli: cli, pfx: pfx + "/", identity: identity, cb: cb, o: o, m: m,
		kick:   make(chan struct{}, 1),
		shards: map[string]bool{}, leading: map[string]*elect.Term{}, leaders: map[string]string{},
	}, nil
}

func checkShards(shards []string) error {
	for _, s := range shards {
		if s == "" || strings.Contains(s, "/") {
			return fmt.Errorf("%w: %q", ErrBadShard, s)
		}
	}
	return nil
}

// Add adds shards for this process to lead its share of. It can be called
// at any time, before or while Run runs. Invalid names add none.
func (r *Runner) Add(shards ...string) error {
	if err := checkShards(shards); err != nil {
		return err
	}
	r.mu.Lock()
	for _, s := range shards {
		r.shards[s] = true
	}
	r.mu.Unlock()
	r.poke()
	return nil
}

// Remove removes shards: a term of one of them ends (with [ErrRemoved]),
// this process deletes its leader key, and it no longer claims the shard.
// Invalid names remove none.
//
// The shards are the group's configuration: add and remove them on every
// process. A shard removed on some processes only can be planned for one of
// those, and stays without leader until all agree (see the package
// documentation, "Limits").
func (r *Runner) Remove(shards ...string) error {
	if err := checkShards(shards); err != nil {
		return err
	}
	r.mu.Lock()
	for _, s := range shards {
		delete(r.shards, s)
	}
	r.mu.Unlock()
	r.poke()
	return nil
}

func (r *Runner) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Shards returns the shards added and not removed, in order.
func (r *Runner) Shards() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.shards))
}

// Leading returns the shards this process leads now, in order.
func (r *Runner) Leading() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.leading))
}

// Leaders returns the identity of each shard's leader as this process last
// saw it, for the shards it was given; a shard without leader is absent.
func (r *Runner) Leaders() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.leaders)
}

// Run joins the group and leads this process's share of the shards, calling
// the callbacks as leadership comes and goes, until ctx ends. It then ends
// every term, waits for the callbacks, and leaves: it revokes its lease,
// which deletes all its keys at once, so that the others take its shards
// over without waiting for a TTL. It returns nil after ctx ends, once every
// callback and goroutine of its own has returned; [ErrRunning] if Run is
// already running; [ErrClientClosed] if the client is closed; and errors
// etcd returns to any of its requests that cannot go away (permission
// denied, say), after ending every term. Other errors are retried with a
// backoff: a failed write pauses all the runner's writes for a while, and
// a lost lease ends every term and joins again with a new one.
func (r *Runner) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer r.running.Store(false)
	n := startNotifier(r.cb.OnNewLeader)
	defer func() {
		n.stop()
		r.mu.Lock()
		clear(r.leaders)
		r.mu.Unlock()
	}()

	bo := retry.NewBackOff()
	for {
		err := r.join(ctx, n)
		switch {
		case ctx.Err() != nil:
			return nil
		case r.cli.Ctx().Err() != nil:
			return ErrClientClosed
		case retry.Permanent(err):
			return err
		case err != nil:
			r.o.log.Warn("shard: joining again after an error", "prefix", r.pfx, "identity", r.identity, "err", err)
			if retry.Sleep(ctx, bo.NextBackOff()) != nil {
				return nil
			}
		default:
			bo.Reset()
		}
	}
}

// join takes one lease, joins the group with it and leads shards until ctx
// ends (it returns nil) or the lease is lost or may be (it returns why).
func (r *Runner) join(ctx context.Context, n *notifier) error {
	margin := *r.o.margin
	sent := time.Now()
	r.m.writes.Inc()
	g, err := r.cli.Grant(ctx, int64(r.o.ttl/time.Second))
	if err != nil {
		return fmt.Errorf("shard: grant lease: %w", err)
	}
	s := &incarnation{
		r: r, ctx: ctx, lease: int64(g.ID), n: n,
		deadline: sent.Add(time.Duration(g.TTL)*time.Second - margin),
		mir:      newMirror(r.pfx),
		terms:    map[string]*term{}, busy: map[string]bool{},
		ended: map[string]int64{}, bo: retry.NewBackOff(),
		results: make(chan result), finished: make(chan finish),
		quit: make(chan struct{}), released: make(chan struct{}),
		resigns: make(chan struct{}, r.o.inflight),
	}
	r.m.writes.Inc()
	put, err := r.cli.Put(ctx, r.pfx+leaseKey(membersDir, s.lease), r.identity, clientv3.WithLease(g.ID))
	if err != nil {
		s.revoke()
		return fmt.Errorf("shard: join: %w", err)
	}
	s.joinRev = put.Header.Revision
	r.o.log.Info("shard: joined", "prefix", r.pfx, "identity", r.identity, "lease", fmt.Sprintf("%x", s.lease))

	var wg sync.WaitGroup
	bg, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		wg.Wait()
	}()
	renewals := make(chan leaseclock.Renewal, 1)
	lc := leaseclock.Clock{Client: r.cli, Lease: g.ID, Margin: margin}
	updates := make(chan update)
	wg.Add(2)
	go func() {
		defer wg.Done()
		lc.Run(bg, (r.o.ttl-margin)/3, renewals)
	}()
	go func() {
		defer wg.Done()
		follow(bg, r.cli, r.pfx, updates, r.m.watchRestarts.Inc)
	}()
	return s.loop(updates, renewals)
}

// notifier calls OnNewLeader from a goroutine of its own, in order, so that
// a slow callback never holds up the runner's loop (and its step-down).
type notifier struct {
	f func(shard, identity string)
	// reported is the last identity reported for each shard; only the
	// incarnation running uses it.
	reported map[string]string

	mu    sync.Mutex
	queue [][2]string
	wake  chan struct{}
	quit  chan struct{}
	done  chan struct{}
}

func startNotifier(f func(shard, identity string)) *notifier {
	n := &notifier{f: f, reported: map[string]string{}, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	if f == nil {
		close(n.done)
		return n
	}
	go func() {
		defer close(n.done)
		for {
			select {
			case <-n.quit:
				return
			case <-n.wake:
			}
			for {
				n.mu.Lock()
				if len(n.queue) == 0 || n.stopped() {
					n.mu.Unlock()
					break
				}
				q := n.queue[0]
				n.queue = n.queue[1:]
				n.mu.Unlock()
				n.f(q[0], q[1])
			}
		}
	}()
	return n
}

func (n *notifier) stopped() bool {
	select {
	case <-n.quit:
		return true
	default:
		return false
	}
}

func (n *notifier) notify(shard, identity string) {
	if n.f == nil {
		return
	}
	n.mu.Lock()
	n.queue = append(n.queue, [2]string{shard, identity})
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// stop drops what is not delivered yet and waits for the call in progress.
func (n *notifier) stop() {
	close(n.quit)
	<-n.done
}
