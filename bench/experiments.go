package bench

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/internal/retry"
	"github.com/quietlock/quietlock/lock"
)

// RevisionCap stops a runaway strategy (watch-prefix) once it has consumed
// this many revisions in one experiment; its rate is then measured over the
// time until the cap. TimeCap likewise bounds a handover experiment: under a
// storm, each standby's watch buffers events faster than it can act on them,
// and the process's memory grows with it.
const (
	RevisionCap = 100_000
	TimeCap     = 20 * time.Second
)

// sessionTTL is the TTL of sessions that must not expire during an
// experiment; crashTTL that of a holder whose crash is measured.
const (
	sessionTTL = 60
	crashTTL   = 2
)

// settle is how long standbys get to start waiting before counting begins.
const settle = time.Second

// Waiting is what K standbys cost the store while another contender holds
// the lock.
type Waiting struct {
	Strategy Strategy
	K        int
	// Window is how long the standbys were watched: the requested window,
	// or less if the strategy reached RevisionCap.
	Window time.Duration
	Capped bool
	// RevisionsPerMin and RaftEntriesPerMin are the growth of the store
	// revision and the raft applied index while waiting, not counting the
	// one foreign put and delete made under the prefix mid-window.
	RevisionsPerMin, RaftEntriesPerMin float64
	// JoinRevisions is the revisions each standby spent to start waiting.
	JoinRevisions float64
	// KeysPerStandby is the keys under the prefix per standby while
	// waiting (the holder's key not counted).
	KeysPerStandby float64
	// Series samples the revisions consumed since the window began.
	Series []Sample
}

// Sample is the revisions consumed At into a window.
type Sample struct {
	At        time.Duration
	Revisions int64
}

// MeasureWaiting runs one holder and k standbys of strategy st, each with
// its own client and session, on a server of its own, and counts what the
// standbys write during window. Half-way through, a foreign key is put and
// deleted under the prefix, as any other tool might.
func MeasureWaiting(ctx context.Context, st Strategy, k int, window time.Duration) (Waiting, error) {
	w := Waiting{Strategy: st, K: k}
	e, err := newEnv()
	if err != nil {
		return w, err
	}
	defer e.close()
	holder, _, err := e.contender(st, sessionTTL)
	if err != nil {
		return w, err
	}
	if err := holder.acquire(ctx); err != nil {
		return w, fmt.Errorf("bench: holder: %w", err)
	}
	standbys := make([]contender, k)
	for i := range standbys {
		if standbys[i], _, err = e.contender(st, sessionTTL); err != nil {
			return w, err
		}
	}
	rev0, _, err := e.stats(ctx)
	if err != nil {
		return w, err
	}
	g := &group{}
	gctx, cancel := context.WithCancel(ctx)
	g.cancel = cancel
	defer g.stop()
	for _, s := range standbys {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			_ = s.acquire(gctx)
		}()
	}
	if err := retry.Sleep(ctx, settle); err != nil {
		return w, err
	}
	rev1, raft1, err := e.stats(ctx)
	if err != nil {
		return w, err
	}
	w.JoinRevisions = float64(rev1-rev0) / float64(k)

	const every = 250 * time.Millisecond
	start := time.Now()
	foreign := false
	rev, raft := rev1, raft1
	for time.Since(start) < window {
		if err := retry.Sleep(ctx, every); err != nil {
			return w, err
		}
		if !foreign && time.Since(start) >= window/2 {
			foreign = true
			if _, err := e.admin.Put(ctx, prefix+"/foreign", ""); err != nil {
				return w, err
			}
			if _, err := e.admin.Delete(ctx, prefix+"/foreign"); err != nil {
				return w, err
			}
		}
		if rev, raft, err = e.stats(ctx); err != nil {
			return w, err
		}
		w.Series = append(w.Series, Sample{At: time.Since(start), Revisions: rev - rev1})
		if rev-rev1 > RevisionCap {
			w.Capped = true
			break
		}
	}
	w.Window = time.Since(start)
	n, err := e.keys(ctx)
	if err != nil {
		return w, err
	}
	w.KeysPerStandby = float64(n-1) / float64(k)
	own := func(d int64) int64 {
		if foreign {
			d -= 2
		}
		return max(d, 0)
	}
	w.RevisionsPerMin = perMinute(own(rev-rev1), w.Window)
	w.RaftEntriesPerMin = perMinute(own(raft-raft1), w.Window)
	return w, nil
}

func perMinute(n int64, d time.Duration) float64 {
	return float64(n) * float64(time.Minute) / float64(d)
}

// MeasureWaitingAll runs MeasureWaiting for several strategies at once,
// each on its own server. Counts do not depend on sharing the CPU, except
// for a strategy that storms: run that one alone.
func MeasureWaitingAll(ctx context.Context, sts []Strategy, k int, window time.Duration) ([]Waiting, error) {
	out := make([]Waiting, len(sts))
	errs := make([]error, len(sts))
	var wg sync.WaitGroup
	for i, st := range sts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = MeasureWaiting(ctx, st, k, window)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// Handover is what a graceful handover costs: the holder releases and one
// of K standbys takes the lock; the old holder then waits again.
type Handover struct {
	Strategy Strategy
	K, N     int
	// Median and P99 are the times from the holder's release call to the
	// winner's acquire returning. N is 0 if no handover completed within
	// TimeCap.
	Median, P99 time.Duration
	// RevisionsPerHandover and RaftEntriesPerHandover count the release,
	// the winner's attempts, and the old holder's return to waiting, on
	// average over the handovers; MedianRaftEntries is their median.
	RevisionsPerHandover, RaftEntriesPerHandover float64
	MedianRaftEntries                            float64
	// Watchers and WatchStreams are the server's for K waiting standbys.
	Watchers, WatchStreams int64
	Capped                 bool
}

// MeasureHandover passes the lock around k+1 contenders n times. The
// watcher gauges it reads are process-wide: run it alone.
func MeasureHandover(ctx context.Context, st Strategy, k, n int) (Handover, error) {
	h := Handover{Strategy: st, K: k}
	e, err := newEnv()
	if err != nil {
		return h, err
	}
	defer e.close()
	w0, s0, err := e.watchers(ctx)
	if err != nil {
		return h, err
	}
	cs := make([]contender, k+1)
	for i := range cs {
		if cs[i], _, err = e.contender(st, sessionTTL); err != nil {
			return h, err
		}
	}
	if err := cs[0].acquire(ctx); err != nil {
		return h, err
	}
	// Each contender takes the lock, reports it, waits to be told to
	// release it, releases it, and waits to be told to rejoin: only after
	// someone else has taken the lock, so that it cannot win its own lock
	// back.
	acquired := make(chan int, len(cs))
	release := make([]chan struct{}, len(cs))
	rejoin := make([]chan struct{}, len(cs))
	g := &group{}
	gctx, cancel := context.WithCancel(ctx)
	g.cancel = cancel
	defer g.stop()
	for i, c := range cs {
		release[i], rejoin[i] = make(chan struct{}), make(chan struct{})
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			held := i == 0
			for {
				if !held {
					if c.acquire(gctx) != nil {
						return
					}
					acquired <- i
				}
				held = false
				select {
				case <-release[i]:
				case <-gctx.Done():
					return
				}
				if c.release(gctx) != nil {
					return
				}
				select {
				case <-rejoin[i]:
				case <-gctx.Done():
					return
				}
			}
		}()
	}
	if err := retry.Sleep(ctx, settle); err != nil {
		return h, err
	}
	w1, s1, err := e.watchers(ctx)
	if err != nil {
		return h, err
	}
	h.Watchers, h.WatchStreams = w1-w0, s1-s0
	rev0, raft0, err := e.stats(ctx)
	if err != nil {
		return h, err
	}
	var (
		lat     []time.Duration
		entries []int64 // raft entries of each handover
	)
	lastRaft := raft0
	holder := 0
	began := time.Now()
	for range n {
		t0 := time.Now()
		release[holder] <- struct{}{}
		old := holder
		// Pollers take their period per handover; only a storm is capped.
		limit := TimeCap - time.Since(began)
		if st.polls() {
			limit = time.Hour
		}
		capped := false
		select {
		case holder = <-acquired:
		case <-time.After(limit):
			capped = true
		case <-ctx.Done():
			return h, ctx.Err()
		}
		if capped {
			h.Capped = true
			break
		}
		lat = append(lat, time.Since(t0))
		rejoin[old] <- struct{}{}
		if !st.polls() {
			// Let the old holder go back to waiting before the next round.
			if err := retry.Sleep(ctx, 200*time.Millisecond); err != nil {
				return h, err
			}
		}
		rev, raft, err := e.stats(ctx)
		if err != nil {
			return h, err
		}
		entries = append(entries, raft-lastRaft)
		lastRaft = raft
		if rev-rev0 > RevisionCap || (!st.polls() && time.Since(began) > TimeCap) {
			h.Capped = true
			break
		}
	}
	rev1, raft1, err := e.stats(ctx)
	if err != nil {
		return h, err
	}
	h.N = len(lat)
	if h.N == 0 {
		// A storm kept every handover from completing within TimeCap.
		return h, nil
	}
	h.RevisionsPerHandover = float64(rev1-rev0) / float64(h.N)
	h.RaftEntriesPerHandover = float64(raft1-raft0) / float64(h.N)
	slices.Sort(lat)
	h.Median, h.P99 = lat[len(lat)/2], lat[(len(lat)*99)/100]
	if len(entries) > 0 {
		slices.Sort(entries)
		h.MedianRaftEntries = float64(entries[len(entries)/2])
	}
	return h, nil
}

// MeasureHandoverAll runs MeasureHandover for several strategies at once.
// The watcher gauges are then summed over them: use it only for strategies
// that watch nothing (the pollers), whose handover time is set by their
// period, not by the CPU.
func MeasureHandoverAll(ctx context.Context, sts []Strategy, ks []int, n int) ([]Handover, error) {
	var (
		out  []Handover
		errs []error
		mu   sync.Mutex
		wg   sync.WaitGroup
	)
	for _, st := range sts {
		for _, k := range ks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h, err := MeasureHandover(ctx, st, k, n)
				mu.Lock()
				defer mu.Unlock()
				out, errs = append(out, h), append(errs, err)
			}()
		}
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b Handover) int {
		if c := slices.Index(Strategies, a.Strategy) - slices.Index(Strategies, b.Strategy); c != 0 {
			return c
		}
		return a.K - b.K
	})
	return out, errors.Join(errs...)
}

// Crash is how long the lock stays unheld after its holder crashes: its
// lease is left to expire (TTL 2 s) while k standbys wait. Failover is 0 if
// no standby took over within TimeCap.
type Crash struct {
	Strategy Strategy
	K        int
	Failover time.Duration
}

// MeasureCrash measures one crash failover.
func MeasureCrash(ctx context.Context, st Strategy, k int) (Crash, error) {
	c := Crash{Strategy: st, K: k}
	e, err := newEnv()
	if err != nil {
		return c, err
	}
	defer e.close()
	holder, hs, err := e.contender(st, crashTTL)
	if err != nil {
		return c, err
	}
	if err := holder.acquire(ctx); err != nil {
		return c, err
	}
	acquired := make(chan struct{}, k)
	g := &group{}
	gctx, cancel := context.WithCancel(ctx)
	g.cancel = cancel
	defer g.stop()
	for range k {
		s, _, err := e.contender(st, sessionTTL)
		if err != nil {
			return c, err
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if s.acquire(gctx) == nil {
				acquired <- struct{}{}
			}
		}()
	}
	if err := retry.Sleep(ctx, settle); err != nil {
		return c, err
	}
	t0 := time.Now()
	hs.Orphan() // stop renewing: the lease expires after its TTL
	select {
	case <-acquired:
		c.Failover = time.Since(t0)
	case <-time.After(TimeCap):
		// A storm kept every standby from taking over: Failover stays 0.
	case <-ctx.Done():
		return c, ctx.Err()
	}
	return c, nil
}

// MeasureCrashAll runs MeasureCrash for several strategies: all but
// watch-prefix at once, each on its own server, then watch-prefix alone, as
// its storm would starve the others.
func MeasureCrashAll(ctx context.Context, sts []Strategy, k int) ([]Crash, error) {
	out := make([]Crash, len(sts))
	errs := make([]error, len(sts))
	var wg sync.WaitGroup
	for i, st := range sts {
		if st == WatchPrefix {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = MeasureCrash(ctx, st, k)
		}()
	}
	wg.Wait()
	for i, st := range sts {
		if st == WatchPrefix {
			out[i], errs[i] = MeasureCrash(ctx, st, k)
		}
	}
	return out, errors.Join(errs...)
}

// TryLockCost is what one TryLock that finds the lock held costs.
type TryLockCost struct {
	Strategy                      Strategy
	N                             int
	Revisions, RaftEntries        float64 // per failed TryLock
	FailedWithErrLocked, Attempts int
}

// MeasureFailedTryLock makes n TryLocks on a held lock: etcd's Mutex for
// EtcdMutex (and the pollers, which use it), quietlock's for QuietlockLock.
func MeasureFailedTryLock(ctx context.Context, st Strategy, n int) (TryLockCost, error) {
	t := TryLockCost{Strategy: st, N: n}
	e, err := newEnv()
	if err != nil {
		return t, err
	}
	defer e.close()
	sessions := make([]*concurrency.Session, 2)
	for i := range sessions {
		cli, err := e.client()
		if err != nil {
			return t, err
		}
		if sessions[i], err = e.session(cli, sessionTTL); err != nil {
			return t, err
		}
	}
	var hold, try func(context.Context) error
	switch st {
	case QuietlockLock:
		hold, try = lock.NewMutex(sessions[0], prefix).Lock, lock.NewMutex(sessions[1], prefix).TryLock
	case EtcdMutex, Poll1s, Poll5s, WatchPrefix:
		hold, try = concurrency.NewMutex(sessions[0], prefix).Lock, concurrency.NewMutex(sessions[1], prefix).TryLock
	default:
		return t, fmt.Errorf("bench: %s has no TryLock", st)
	}
	if err := hold(ctx); err != nil {
		return t, err
	}
	rev0, raft0, err := e.stats(ctx)
	if err != nil {
		return t, err
	}
	for range n {
		t.Attempts++
		if err := try(ctx); errors.Is(err, concurrency.ErrLocked) {
			t.FailedWithErrLocked++
		} else if err != nil {
			return t, err
		}
	}
	rev1, raft1, err := e.stats(ctx)
	if err != nil {
		return t, err
	}
	t.Revisions = float64(rev1-rev0) / float64(n)
	t.RaftEntries = float64(raft1-raft0) / float64(n)
	return t, nil
}

// MeasureFloor returns the median time from a put to a watcher of the key
// being told, over n puts: the fastest any handover can be on this server.
func MeasureFloor(ctx context.Context, n int) (time.Duration, error) {
	e, err := newEnv()
	if err != nil {
		return 0, err
	}
	defer e.close()
	cli, err := e.client()
	if err != nil {
		return 0, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := cli.Watch(wctx, "/bench/floor", clientv3.WithCreatedNotify())
	<-wch // created
	lat := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if _, err := e.admin.Put(ctx, "/bench/floor", "x"); err != nil {
			return 0, err
		}
		if _, ok := <-wch; !ok {
			return 0, errors.New("bench: floor watch closed")
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return lat[len(lat)/2], nil
}

// Scale is what many waiters cost on one client.
type Scale struct {
	Strategy                     Strategy
	Waiters, Locks               int
	Watchers, WatchStreams       int64
	GoroutinesPerWaiter          float64
	HeapBytesPerWaiter           float64 // client and server: both run in this process
	KeysPerWaiter                float64
	RevisionsToJoin, RaftEntries int64
}

// MeasureScale makes waiters waiters, each with its own session but all on
// one client, wait on locks locks held by another client, and measures
// what they cost once settled. The heap includes the embedded server's.
func MeasureScale(ctx context.Context, st Strategy, waiters, locks int) (Scale, error) {
	sc := Scale{Strategy: st, Waiters: waiters, Locks: locks}
	if st != QuietlockLock && st != EtcdMutex {
		return sc, fmt.Errorf("bench: scale measures %s and %s only", QuietlockLock, EtcdMutex)
	}
	e, err := newEnv()
	if err != nil {
		return sc, err
	}
	defer e.close()
	holderCli, err := e.client()
	if err != nil {
		return sc, err
	}
	waiterCli, err := e.client()
	if err != nil {
		return sc, err
	}
	mutex := func(s *concurrency.Session, pfx string) contender {
		if st == QuietlockLock {
			m := lock.NewMutex(s, pfx)
			return funcs{m.Lock, m.Unlock}
		}
		m := concurrency.NewMutex(s, pfx)
		return funcs{m.Lock, m.Unlock}
	}
	for l := range locks {
		s, err := e.session(holderCli, sessionTTL)
		if err != nil {
			return sc, err
		}
		if err := mutex(s, fmt.Sprintf("%s-%d", prefix, l)).acquire(ctx); err != nil {
			return sc, err
		}
	}
	// Sessions first (their lease grants are not the waiters' cost).
	ws := make([]contender, waiters)
	sem := make(chan struct{}, 64)
	errs := make([]error, waiters)
	var wg sync.WaitGroup
	for i := range ws {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s, err := e.session(waiterCli, sessionTTL)
			if err == nil {
				ws[i] = mutex(s, fmt.Sprintf("%s-%d", prefix, i%locks))
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return sc, err
	}
	w0, s0, err := e.watchers(ctx)
	if err != nil {
		return sc, err
	}
	rev0, raft0, err := e.stats(ctx)
	if err != nil {
		return sc, err
	}
	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	g0 := runtime.NumGoroutine()

	g := &group{}
	gctx, cancel := context.WithCancel(ctx)
	g.cancel = cancel
	defer g.stop()
	for _, w := range ws {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			_ = w.acquire(gctx)
		}()
	}
	// Settled when the server's watcher count stops changing.
	last := int64(-1)
	for {
		if err := retry.Sleep(ctx, time.Second); err != nil {
			return sc, err
		}
		w, _, err := e.watchers(ctx)
		if err != nil {
			return sc, err
		}
		if w == last && w > w0 {
			break
		}
		last = w
	}
	w1, s1, err := e.watchers(ctx)
	if err != nil {
		return sc, err
	}
	rev1, raft1, err := e.stats(ctx)
	if err != nil {
		return sc, err
	}
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	g1 := runtime.NumGoroutine()
	n, err := e.admin.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return sc, err
	}
	sc.Watchers, sc.WatchStreams = w1-w0, s1-s0
	sc.GoroutinesPerWaiter = float64(g1-g0) / float64(waiters)
	sc.HeapBytesPerWaiter = (float64(m1.HeapAlloc) - float64(m0.HeapAlloc)) / float64(waiters)
	sc.KeysPerWaiter = float64(n.Count-int64(locks)) / float64(waiters)
	sc.RevisionsToJoin, sc.RaftEntries = rev1-rev0, raft1-raft0
	return sc, nil
}

// WaitingAt measures every strategy with k standbys: all but watch-prefix
// at once, each on its own server, then watch-prefix alone, because its rate
// is set by how much CPU it gets.
func WaitingAt(ctx context.Context, k int, window time.Duration) ([]Waiting, error) {
	var quiet []Strategy
	for _, st := range Strategies {
		if st != WatchPrefix {
			quiet = append(quiet, st)
		}
	}
	out, err := MeasureWaitingAll(ctx, quiet, k, window)
	if err != nil {
		return nil, err
	}
	storm, err := MeasureWaiting(ctx, WatchPrefix, k, window)
	if err != nil {
		return nil, err
	}
	out = append(out, storm)
	slices.SortFunc(out, func(a, b Waiting) int {
		return slices.Index(Strategies, a.Strategy) - slices.Index(Strategies, b.Strategy)
	})
	return out, nil
}

// Mixed is the fairness of one waiter of a strategy beside etcd's queue.
type Mixed struct {
	Strategy Strategy
	// Handovers is the number of handovers it took the waiter to get the
	// lock, while etcd-mutex waiters joined one after another, each while
	// the lock was held; 0 if it did not within the cap.
	Handovers, Cap int
	// Writes is the raft entries the waiter's own requests cost until it
	// got the lock (or until the cap): the run's less the etcd waiters'
	// (a lease grant, a join and a release per handover).
	Writes int64
	// KeysLeft is the keys under the prefix once everyone has released.
	KeysLeft int64
}

// MeasureMixed makes one waiter of strategy st wait while an etcd-mutex
// holds the lock; then, up to limit times, another etcd-mutex waiter
// queues and the holder releases, until st's waiter gets the lock.
func MeasureMixed(ctx context.Context, st Strategy, limit int) (Mixed, error) {
	m := Mixed{Strategy: st, Cap: limit}
	e, err := newEnv()
	if err != nil {
		return m, err
	}
	defer e.close()
	holder, _, err := e.contender(EtcdMutex, sessionTTL)
	if err != nil {
		return m, err
	}
	if err := holder.acquire(ctx); err != nil {
		return m, err
	}
	w, _, err := e.contender(st, sessionTTL)
	if err != nil {
		return m, err
	}
	g := &group{}
	gctx, cancel := context.WithCancel(ctx)
	g.cancel = cancel
	defer g.stop()
	got := make(chan error, 1)
	g.wg.Add(1)
	go func() { defer g.wg.Done(); got <- w.acquire(gctx) }()
	if err := retry.Sleep(ctx, settle); err != nil {
		return m, err
	}
	_, raft0, err := e.stats(ctx)
	if err != nil {
		return m, err
	}
	holders := int64(0) // raft entries of the etcd waiters: a session, a join and a release each
	for h := 1; h <= limit && m.Handovers == 0; h++ {
		next, _, err := e.contender(EtcdMutex, sessionTTL)
		if err != nil {
			return m, err
		}
		locked := make(chan error, 1)
		g.wg.Add(1)
		go func() { defer g.wg.Done(); locked <- next.acquire(gctx) }()
		for {
			n, err := e.keys(ctx)
			if err != nil {
				return m, err
			}
			if n >= 2 {
				break
			}
			if err := retry.Sleep(ctx, time.Millisecond); err != nil {
				return m, err
			}
		}
		if err := holder.release(ctx); err != nil {
			return m, err
		}
		holders += 3
		select {
		case err := <-got:
			if err != nil {
				return m, err
			}
			m.Handovers = h
			_, raft1, err := e.stats(ctx)
			if err != nil {
				return m, err
			}
			m.Writes = raft1 - raft0 - holders
			if err := w.release(ctx); err != nil {
				return m, err
			}
			if err := <-locked; err != nil {
				return m, err
			}
			holder = next
		case err := <-locked:
			if err != nil {
				return m, err
			}
			holder = next
		case <-ctx.Done():
			return m, ctx.Err()
		}
	}
	if m.Handovers == 0 {
		_, raft1, err := e.stats(ctx)
		if err != nil {
			return m, err
		}
		m.Writes = raft1 - raft0 - holders
	}
	if err := holder.release(ctx); err != nil {
		return m, err
	}
	if m.Handovers == 0 {
		// The waiter still waits; stop it before counting keys.
		cancel()
		<-got
	}
	if m.KeysLeft, err = e.keys(ctx); err != nil {
		return m, err
	}
	return m, nil
}
