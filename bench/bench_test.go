package bench_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quietlock/quietlock/bench"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The counting itself is right, so a benchmark cannot silently measure
// nothing: etcd's failed TryLock costs 2 revisions and 2 raft entries,
// quietlock's none; a poller at 1 s costs 2 revisions per attempt; a
// quietlock waiter costs nothing; watch-prefix storms after one foreign
// event even with a single standby.
func TestCounting(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		st        bench.Strategy
		rev, raft float64
	}{
		{bench.EtcdMutex, 2, 2},
		{bench.QuietlockLock, 0, 0},
	} {
		c, err := bench.MeasureFailedTryLock(ctx, tc.st, 10)
		if err != nil {
			t.Fatal(err)
		}
		if c.Revisions != tc.rev || c.RaftEntries != tc.raft || c.FailedWithErrLocked != 10 {
			t.Errorf("%s failed TryLock: %+v, want %v revisions and %v raft entries each", tc.st, c, tc.rev, tc.raft)
		}
	}

	ws, err := bench.MeasureWaitingAll(ctx, []bench.Strategy{bench.Poll1s, bench.QuietlockLock}, 1, 4*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	poll, quiet := ws[0], ws[1]
	// 2 revisions per attempt, one attempt a second: 120 a minute, give or
	// take an attempt at either end of the window.
	if poll.RevisionsPerMin < 60 || poll.RevisionsPerMin > 180 || poll.RaftEntriesPerMin != poll.RevisionsPerMin {
		t.Errorf("poll-1s, 1 standby: %.0f revisions/min and %.0f raft entries/min, want about 120 of each", poll.RevisionsPerMin, poll.RaftEntriesPerMin)
	}
	if quiet.RevisionsPerMin != 0 || quiet.RaftEntriesPerMin != 0 || quiet.KeysPerStandby != 0 || quiet.JoinRevisions != 0 {
		t.Errorf("quietlock-lock, 1 standby: %+v, want nothing written", quiet)
	}
	storm, err := bench.MeasureWaiting(ctx, bench.WatchPrefix, 1, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if storm.RevisionsPerMin < 1000 {
		t.Errorf("watch-prefix, 1 standby, after a foreign event: %.0f revisions/min, want a storm", storm.RevisionsPerMin)
	}
}

func ks() []int {
	if testing.Short() {
		return []int{1, 4}
	}
	return []int{1, 4, 16, 64}
}

func window() time.Duration {
	if testing.Short() {
		return 6 * time.Second
	}
	return 15 * time.Second
}

// measured runs an experiment once per benchmark name, however often the
// benchmark harness calls the function, and reports from its result.
var (
	mu      sync.Mutex
	results = map[string]any{}
)

func measured[T any](b *testing.B, f func() (T, error)) T {
	b.Helper()
	mu.Lock()
	defer mu.Unlock()
	if r, ok := results[b.Name()]; ok {
		return r.(T)
	}
	r, err := f()
	if err != nil {
		b.Fatal(err)
	}
	results[b.Name()] = r
	return r
}

func report(b *testing.B, metrics map[string]float64) {
	b.ReportMetric(0, "ns/op")
	for unit, v := range metrics {
		b.ReportMetric(v, unit)
	}
}

// BenchmarkWaiting: what K standbys write while another contender holds
// the lock, per strategy.
func BenchmarkWaiting(b *testing.B) {
	for _, k := range ks() {
		b.Run(fmt.Sprintf("K=%d", k), func(b *testing.B) {
			ws := measured(b, func() ([]bench.Waiting, error) { return bench.WaitingAt(context.Background(), k, window()) })
			for _, w := range ws {
				b.Run("strategy="+string(w.Strategy), func(b *testing.B) {
					report(b, map[string]float64{
						"revisions/min":     w.RevisionsPerMin,
						"raft-entries/min":  w.RaftEntriesPerMin,
						"keys/standby":      w.KeysPerStandby,
						"join-revisions/op": w.JoinRevisions,
					})
				})
			}
		})
	}
}

// BenchmarkHandover: graceful handover latency and cost, and the server's
// watchers and streams for K waiting standbys.
func BenchmarkHandover(b *testing.B) {
	n, pollN := 20, 20
	if testing.Short() {
		pollN = 5
	}
	// The pollers' handovers take their period: run them together.
	polls := measured(b, func() ([]bench.Handover, error) {
		return bench.MeasureHandoverAll(context.Background(), []bench.Strategy{bench.Poll1s, bench.Poll5s}, ks(), pollN)
	})
	for _, st := range bench.Strategies {
		for _, k := range ks() {
			b.Run(fmt.Sprintf("strategy=%s/K=%d", st, k), func(b *testing.B) {
				h := measured(b, func() (bench.Handover, error) {
					for _, h := range polls {
						if h.Strategy == st && h.K == k {
							return h, nil
						}
					}
					return bench.MeasureHandover(context.Background(), st, k, n)
				})
				report(b, map[string]float64{
					"handover-ms":           float64(h.Median) / 1e6,
					"handover-p99-ms":       float64(h.P99) / 1e6,
					"revisions/handover":    h.RevisionsPerHandover,
					"raft-entries/handover": h.RaftEntriesPerHandover,
					"server-watchers":       float64(h.Watchers),
					"server-watch-streams":  float64(h.WatchStreams),
				})
			})
		}
	}
}

// BenchmarkCrash: how long the lock stays unheld when its holder crashes
// and its lease (TTL 2 s) expires.
func BenchmarkCrash(b *testing.B) {
	for _, k := range ks() {
		b.Run(fmt.Sprintf("K=%d", k), func(b *testing.B) {
			cs := measured(b, func() ([]bench.Crash, error) {
				return bench.MeasureCrashAll(context.Background(), bench.Strategies, k)
			})
			for _, c := range cs {
				b.Run("strategy="+string(c.Strategy), func(b *testing.B) {
					if c.Failover == 0 {
						b.Skipf("no standby took over within %v (storm)", bench.TimeCap)
					}
					report(b, map[string]float64{"failover-ms": float64(c.Failover) / 1e6})
				})
			}
		})
	}
}

// BenchmarkFailedTryLock: what a TryLock that finds the lock held costs.
func BenchmarkFailedTryLock(b *testing.B) {
	for _, st := range []bench.Strategy{bench.EtcdMutex, bench.QuietlockLock} {
		b.Run("strategy="+string(st), func(b *testing.B) {
			c := measured(b, func() (bench.TryLockCost, error) {
				return bench.MeasureFailedTryLock(context.Background(), st, 100)
			})
			report(b, map[string]float64{"revisions/op": c.Revisions, "raft-entries/op": c.RaftEntries})
		})
	}
}

// BenchmarkFloor: put to watch notification on the same server.
func BenchmarkFloor(b *testing.B) {
	d := measured(b, func() (time.Duration, error) { return bench.MeasureFloor(context.Background(), 200) })
	report(b, map[string]float64{"put-to-watch-ms": float64(d) / 1e6})
}

// BenchmarkScale: many waiters, each with its own session, on one client
// across many locks.
func BenchmarkScale(b *testing.B) {
	waiters, locks := 10_000, 100
	if testing.Short() {
		waiters, locks = 1000, 10
	}
	for _, st := range []bench.Strategy{bench.EtcdMutex, bench.QuietlockLock} {
		b.Run(fmt.Sprintf("strategy=%s/waiters=%d/locks=%d", st, waiters, locks), func(b *testing.B) {
			s := measured(b, func() (bench.Scale, error) {
				return bench.MeasureScale(context.Background(), st, waiters, locks)
			})
			report(b, map[string]float64{
				"server-watchers":      float64(s.Watchers),
				"server-watch-streams": float64(s.WatchStreams),
				"goroutines/waiter":    s.GoroutinesPerWaiter,
				"heap-bytes/waiter":    s.HeapBytesPerWaiter,
				"keys/waiter":          s.KeysPerWaiter,
			})
		})
	}
}
