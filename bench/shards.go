package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/quietlocktest"
	"github.com/quietlock/quietlock/shard"
)

// ShardImpl is one way for M processes to lead N shards.
type ShardImpl string

// The ways compared by [MeasureShards].
const (
	// ShardRunner is one shard.Runner per process, given every shard.
	ShardRunner ShardImpl = "quietlock shard.Runner"
	// ShardElectRuns is one elect.Run per shard per process: M*N Runs, each
	// with a session of its own.
	ShardElectRuns ShardImpl = "elect.Run per shard"
	// ShardEtcdElection is one concurrency.Election per shard per process,
	// all on one session per process; every process campaigns on every
	// shard, so M*N keys queue.
	ShardEtcdElection ShardImpl = "etcd concurrency.Election per shard"
)

// shardPrefix is the prefix every shard experiment works under.
const shardPrefix = "/bench/shards"

// keepAliveMethod is the gRPC method of etcd's lease renewal stream.
const keepAliveMethod = "/etcdserverpb.Lease/LeaseKeepAlive"

// ShardConfig is one shard experiment.
type ShardConfig struct {
	Shards, Procs int
	TTL           time.Duration
	// Steady is how long the steady state is measured.
	Steady time.Duration
	// Quiet is how long etcd's raft index must stay still, with every shard
	// led, for things to count as settled.
	Quiet time.Duration
	// SettleTimeout bounds each wait for things to settle.
	SettleTimeout time.Duration
	// Events makes a ShardRunner experiment go on, after the steady state,
	// with a join, a crash and a graceful leave.
	Events bool
}

// Settle is how things went from an event (a start, a join, a crash, a
// leave) until every shard was led again and nothing was written for
// ShardConfig.Quiet.
type Settle struct {
	Event string
	Procs int // processes alive after the event
	// Settled is false if it did not settle within SettleTimeout; Took is
	// then the timeout.
	Settled bool
	// AllLed is the time from the event until every shard first had a
	// leader among the processes alive; Took until it settled (the moment
	// the raft index last moved, to within a poll of 100 ms).
	AllLed, Took time.Duration
	// Revisions and RaftEntries are what etcd's store revision and raft
	// applied index moved from just before the event until it settled.
	Revisions, RaftEntries int64
	// Leaders is how many shards each process alive leads, as etcd says;
	// Balance is the max - min of it.
	Leaders []int
	Balance int
}

// ShardResult is what one way of leading many shards costs.
type ShardResult struct {
	Impl ShardImpl
	Cfg  ShardConfig
	// EtcdVersion is the server's, from its Status.
	EtcdVersion string
	Start       Settle
	// Leases is the server's count of leases, once settled.
	Leases int
	// KeepAliveOpen is the LeaseKeepAlive gRPC streams each process's
	// client has open once settled; KeepAliveOpened the streams it opened
	// from start until settled; both from a stream interceptor on the
	// client. KeepAliveOpenedPerMin and RenewalsPerMin are the streams
	// opened and the renewals sent on them during the steady state, per
	// process per minute.
	KeepAliveOpen, KeepAliveOpened        []int64
	KeepAliveOpenedPerMin, RenewalsPerMin []float64
	// Watchers and WatchStreams are the server's gauges once settled, less
	// what they were before the processes started.
	Watchers, WatchStreams int64
	// Keys is the number of keys under the prefix once settled.
	Keys int64
	// SteadyWindow is how long the steady state was measured;
	// RevisionsPerMin and RaftEntriesPerMin what etcd's revision and raft
	// index moved over it, per minute. SteadyBalance is the balance at its
	// end.
	SteadyWindow                       time.Duration
	RevisionsPerMin, RaftEntriesPerMin float64
	SteadyBalance                      int
	// Events are the join, crash and leave, for ShardRunner with Events.
	Events []Settle
}

// keepAliveCounter counts one client's LeaseKeepAlive streams and the
// renewals sent on them.
type keepAliveCounter struct {
	opened, open, sent atomic.Int64
}

func (c *keepAliveCounter) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil || method != keepAliveMethod {
		return s, err
	}
	c.opened.Add(1)
	c.open.Add(1)
	cs := &countedStream{ClientStream: s, c: c}
	// A stream is over when its context is (the caller cancelled it, or
	// gRPC finished it) or when a receive fails.
	go func() {
		<-s.Context().Done()
		cs.close()
	}()
	return cs, nil
}

type countedStream struct {
	grpc.ClientStream
	c    *keepAliveCounter
	once sync.Once
}

func (s *countedStream) close() { s.once.Do(func() { s.c.open.Add(-1) }) }

func (s *countedStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err == nil {
		s.c.sent.Add(1)
	}
	return err
}

func (s *countedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil {
		s.close()
	}
	return err
}

// shardProc is one process: a client of its own, and what runs on it.
type shardProc struct {
	id      string
	cli     *clientv3.Client
	ka      *keepAliveCounter
	leading atomic.Int64 // shards its callbacks say it leads
	crashed atomic.Bool  // crashed or left: no longer counted as alive
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errs    chan error
}

func (p *shardProc) stop() {
	p.cancel()
	p.wg.Wait()
}

// shardBench is one shard experiment on a server of its own.
type shardBench struct {
	e      *env
	impl   ShardImpl
	cfg    ShardConfig
	shards []string
	procs  []*shardProc
}

// MeasureShards runs cfg.Procs processes of impl on cfg.Shards shards, on
// a server of its own, and measures what they cost once settled and in the
// steady state; for ShardRunner with cfg.Events, then also a join, a crash
// and a graceful leave. The watcher gauges are process-wide: run it alone.
func MeasureShards(ctx context.Context, impl ShardImpl, cfg ShardConfig) (ShardResult, error) {
	res := ShardResult{Impl: impl, Cfg: cfg}
	e, err := newEnv()
	if err != nil {
		return res, err
	}
	defer e.close()
	b := &shardBench{e: e, impl: impl, cfg: cfg}
	for i := range cfg.Shards {
		b.shards = append(b.shards, fmt.Sprintf("s%04d", i))
	}
	defer b.stopAll()

	st, err := e.admin.Status(ctx, strings.TrimPrefix(e.endpoint, "http://"))
	if err != nil {
		return res, err
	}
	res.EtcdVersion = st.Version
	w0, s0, err := e.watchers(ctx)
	if err != nil {
		return res, err
	}

	before, err := b.stats(ctx)
	if err != nil {
		return res, err
	}
	began := time.Now()
	for i := range cfg.Procs {
		if err := b.startProc(fmt.Sprintf("p%d", i)); err != nil {
			return res, err
		}
	}
	if res.Start, err = b.settle(ctx, "start", before, began); err != nil {
		return res, err
	}
	if !res.Start.Settled {
		return res, nil
	}

	ls, err := e.admin.Leases(ctx)
	if err != nil {
		return res, err
	}
	res.Leases = len(ls.Leases)
	w1, s1, err := e.watchers(ctx)
	if err != nil {
		return res, err
	}
	res.Watchers, res.WatchStreams = w1-w0, s1-s0
	kr, err := e.admin.Get(ctx, shardPrefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return res, err
	}
	res.Keys = kr.Count
	for _, p := range b.procs {
		res.KeepAliveOpen = append(res.KeepAliveOpen, p.ka.open.Load())
		res.KeepAliveOpened = append(res.KeepAliveOpened, p.ka.opened.Load())
	}

	// The steady state.
	opened0, sent0 := make([]int64, len(b.procs)), make([]int64, len(b.procs))
	for i, p := range b.procs {
		opened0[i], sent0[i] = p.ka.opened.Load(), p.ka.sent.Load()
	}
	rev0, raft0, err := e.stats(ctx)
	if err != nil {
		return res, err
	}
	t0 := time.Now()
	if err := sleep(ctx, cfg.Steady); err != nil {
		return res, err
	}
	rev1, raft1, err := e.stats(ctx)
	if err != nil {
		return res, err
	}
	res.SteadyWindow = time.Since(t0)
	res.RevisionsPerMin = perMinute(rev1-rev0, res.SteadyWindow)
	res.RaftEntriesPerMin = perMinute(raft1-raft0, res.SteadyWindow)
	for i, p := range b.procs {
		res.KeepAliveOpenedPerMin = append(res.KeepAliveOpenedPerMin, perMinute(p.ka.opened.Load()-opened0[i], res.SteadyWindow))
		res.RenewalsPerMin = append(res.RenewalsPerMin, perMinute(p.ka.sent.Load()-sent0[i], res.SteadyWindow))
	}
	v, err := b.view(ctx)
	if err != nil {
		return res, err
	}
	_, res.SteadyBalance = b.balance(v)

	if impl != ShardRunner || !cfg.Events {
		return res, nil
	}
	event := func(name string, act func() error) (bool, error) {
		before, err := b.stats(ctx)
		if err != nil {
			return false, err
		}
		began := time.Now()
		if err := act(); err != nil {
			return false, err
		}
		s, err := b.settle(ctx, name, before, began)
		if err != nil {
			return false, err
		}
		res.Events = append(res.Events, s)
		return s.Settled, nil
	}
	// A sixth process joins.
	if ok, err := event("join", func() error { return b.startProc(fmt.Sprintf("p%d", cfg.Procs)) }); err != nil || !ok {
		return res, err
	}
	// One process's client goes away without revoking anything: its lease
	// has to expire.
	if ok, err := event("crash", func() error {
		p := b.procs[1]
		p.crashed.Store(true)
		return p.cli.Close()
	}); err != nil || !ok {
		return res, err
	}
	// The process that joined leaves gracefully: its Run revokes its lease
	// once its context ends. (stopAll waits for it.)
	_, err = event("graceful leave", func() error {
		p := b.procs[len(b.procs)-1]
		p.crashed.Store(true)
		p.cancel()
		return nil
	})
	return res, err
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// client returns a new client whose LeaseKeepAlive streams are counted.
func (b *shardBench) client() (*clientv3.Client, *keepAliveCounter, error) {
	ka := &keepAliveCounter{}
	cfg := quietlocktest.ClientConfig(b.e.endpoint)
	cfg.DialOptions = append(slices.Clone(cfg.DialOptions), grpc.WithChainStreamInterceptor(ka.intercept))
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	b.e.mu.Lock()
	b.e.clients = append(b.e.clients, cli)
	b.e.mu.Unlock()
	return cli, ka, nil
}

// startProc starts one process of the experiment's kind, with every shard.
func (b *shardBench) startProc(id string) error {
	cli, ka, err := b.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &shardProc{id: id, cli: cli, ka: ka, cancel: cancel, errs: make(chan error, 1)}
	report := func(err error) {
		if err != nil {
			select {
			case p.errs <- err:
			default:
			}
		}
	}
	ttl := int(b.cfg.TTL / time.Second)
	switch b.impl {
	case ShardRunner:
		r, err := shard.New(cli, shardPrefix, id, shard.Callbacks{
			OnStartedLeading: func(ctx context.Context, _ string, _ *elect.Term) {
				p.leading.Add(1)
				<-ctx.Done()
				p.leading.Add(-1)
			},
		}, shard.WithTTL(b.cfg.TTL))
		if err != nil {
			cancel()
			return err
		}
		if err := r.Add(b.shards...); err != nil {
			cancel()
			return err
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := r.Run(ctx); err != nil && !p.crashed.Load() {
				report(fmt.Errorf("bench: %s: Run: %w", id, err))
			}
		}()
	case ShardElectRuns:
		cb := elect.Callbacks{OnStartedLeading: func(ctx context.Context, _ *elect.Term) {
			p.leading.Add(1)
			<-ctx.Done()
			p.leading.Add(-1)
		}}
		for _, sh := range b.shards {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				if err := elect.Run(ctx, cli, shardPrefix+"/"+sh, id, cb, elect.WithTTL(b.cfg.TTL)); err != nil && !p.crashed.Load() {
					report(fmt.Errorf("bench: %s: elect.Run %s: %w", id, sh, err))
				}
			}()
		}
	case ShardEtcdElection:
		s, err := b.e.session(cli, ttl)
		if err != nil {
			cancel()
			return err
		}
		for _, sh := range b.shards {
			el := concurrency.NewElection(s, shardPrefix+"/"+sh)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				if err := el.Campaign(ctx, id); err != nil {
					if ctx.Err() == nil {
						report(fmt.Errorf("bench: %s: Campaign %s: %w", id, sh, err))
					}
					return
				}
				p.leading.Add(1)
				<-ctx.Done()
				p.leading.Add(-1)
			}()
		}
	default:
		cancel()
		return fmt.Errorf("bench: no shard implementation %q", b.impl)
	}
	b.procs = append(b.procs, p)
	return nil
}

// stopAll stops every process, in parallel, bounded: the server goes away
// right after with whatever they leave.
func (b *shardBench) stopAll() {
	var wg sync.WaitGroup
	for _, p := range b.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stop()
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
	}
}

// alive returns the processes that have not crashed or left.
func (b *shardBench) alive() []*shardProc {
	var out []*shardProc
	for _, p := range b.procs {
		if !p.crashed.Load() {
			out = append(out, p)
		}
	}
	return out
}

type shardStats struct{ rev, raft int64 }

func (b *shardBench) stats(ctx context.Context) (shardStats, error) {
	rev, raft, err := b.e.stats(ctx)
	return shardStats{rev, raft}, err
}

// shardView is what etcd says at one moment: each shard's leader (the
// identity in its key with the lowest create revision), and the leases.
type shardView struct {
	leader map[string]string
	leases int
}

// leaderKeys is where the leader keys of the experiment's shards are:
// shard.Runner keeps them under "shards/", the others' elections are on
// prefix + "/" + shard.
func (b *shardBench) leaderKeys() string {
	if b.impl == ShardRunner {
		return shardPrefix + "/shards/"
	}
	return shardPrefix + "/"
}

func (b *shardBench) view(ctx context.Context) (shardView, error) {
	dir := b.leaderKeys()
	resp, err := b.e.admin.Get(ctx, dir, clientv3.WithPrefix())
	if err != nil {
		return shardView{}, err
	}
	v := shardView{leader: map[string]string{}}
	first := map[string]int64{}
	for _, kv := range resp.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), dir)
		i := strings.LastIndexByte(rest, '/')
		if i <= 0 {
			continue
		}
		sh := rest[:i]
		if r, ok := first[sh]; !ok || kv.CreateRevision < r {
			first[sh], v.leader[sh] = kv.CreateRevision, string(kv.Value)
		}
	}
	ls, err := b.e.admin.Leases(ctx)
	if err != nil {
		return shardView{}, err
	}
	v.leases = len(ls.Leases)
	return v, nil
}

// balance returns how many shards each process alive leads in v, and the
// max - min of it.
func (b *shardBench) balance(v shardView) ([]int, int) {
	alive := b.alive()
	count := make(map[string]int, len(alive))
	for _, id := range v.leader {
		count[id]++
	}
	out := make([]int, len(alive))
	for i, p := range alive {
		out[i] = count[p.id]
	}
	if len(out) == 0 {
		return out, 0
	}
	return out, slices.Max(out) - slices.Min(out)
}

// allLed reports whether every shard has a leader among the processes
// alive, and each process's callbacks agree with etcd on how many it leads.
func (b *shardBench) allLed(v shardView) (led, agreed bool) {
	alive := b.alive()
	ids := make(map[string]*shardProc, len(alive))
	for _, p := range alive {
		ids[p.id] = p
	}
	count := map[string]int64{}
	for _, sh := range b.shards {
		id, ok := v.leader[sh]
		if !ok || ids[id] == nil {
			return false, false
		}
		count[id]++
	}
	for _, p := range alive {
		if p.leading.Load() != count[p.id] {
			return true, false
		}
	}
	return true, true
}

// wantLeases is the leases the processes alive hold once settled.
func (b *shardBench) wantLeases() int {
	n := len(b.alive())
	if b.impl == ShardElectRuns {
		return n * len(b.shards)
	}
	return n
}

// settle waits until every shard is led by a process alive, the callbacks
// agree with etcd, the leases are what they should be, for ShardRunner the
// leaders are balanced (max - min <= 1), and the raft index has not moved
// for cfg.Quiet. before is the server's state just before the event, start
// the moment the event began.
func (b *shardBench) settle(ctx context.Context, event string, before shardStats, start time.Time) (Settle, error) {
	s := Settle{Event: event, Procs: len(b.alive())}
	var since time.Time // when the condition began to hold at cand
	var cand shardStats
	for {
		now := time.Now()
		for _, p := range b.procs {
			select {
			case err := <-p.errs:
				return s, err
			default:
			}
		}
		if now.Sub(start) > b.cfg.SettleTimeout {
			s.Took = b.cfg.SettleTimeout
			v, err := b.view(ctx)
			if err != nil {
				return s, err
			}
			s.Leaders, s.Balance = b.balance(v)
			return s, nil
		}
		st, err := b.stats(ctx)
		if err != nil {
			return s, err
		}
		v, err := b.view(ctx)
		if err != nil {
			return s, err
		}
		led, agreed := b.allLed(v)
		if led && s.AllLed == 0 {
			s.AllLed = now.Sub(start)
		}
		_, bal := b.balance(v)
		ok := agreed && v.leases == b.wantLeases() && (b.impl != ShardRunner || bal <= 1)
		switch {
		case !ok:
			since = time.Time{}
		case since.IsZero() || st.raft != cand.raft:
			since, cand = now, st
		case now.Sub(since) >= b.cfg.Quiet:
			s.Settled = true
			s.Took = since.Sub(start)
			s.Revisions, s.RaftEntries = cand.rev-before.rev, cand.raft-before.raft
			s.Leaders, s.Balance = b.balance(v)
			return s, nil
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return s, err
		}
	}
}
