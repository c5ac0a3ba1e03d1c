//go:build go1.24

package soaktest_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/internal/testutil"
	"github.com/quietlock/quietlock/internal/watchwait"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

// soakCycles is 10^4 (5*10^3 with -race, whose slowdown would otherwise
// bring this one test near go test's default 10-minute limit; 10^3 with
// -short), or $QUIETLOCK_SOAK_CYCLES.
func soakCycles(t *testing.T) int {
	if v := os.Getenv("QUIETLOCK_SOAK_CYCLES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("QUIETLOCK_SOAK_CYCLES: %v", err)
		}
		return n
	}
	switch {
	case testing.Short():
		return 1000
	case raceEnabled:
		return 5000
	}
	return 10_000
}

// Many acquire/release/cancel cycles over many locks, with sessions closed
// and opened along the way, leave nothing behind: no key, no lease of a
// closed session, watchers, streams and goroutines at baseline, and the heap
// within a small constant of where it started.
func TestSoak(t *testing.T) {
	testutil.SkipOnExternal(t)
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/soak"
	const locks, workers = 50, 8
	cycles := soakCycles(t)
	seed := time.Now().UnixNano()
	t.Logf("%d cycles, %d locks, %d workers, seed %d", cycles, locks, workers, seed)
	clients := []*clientv3.Client{c.NewClient(), c.NewClient()}
	// A client starts its lease keepalive goroutines with its first session
	// and keeps them until it closes: start them before the baseline.
	for _, cli := range clients {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}

	base := c.Stats()
	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	g0 := runtime.NumGoroutine()
	start := time.Now()

	var (
		next, acquired, sessions atomic.Int64
		wg                       sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(w)))
			cli := clients[w%len(clients)]
			var s *concurrency.Session
			defer func() {
				if s != nil {
					s.Close()
				}
			}()
			for i := next.Add(1); i <= int64(cycles); i = next.Add(1) {
				if s == nil || rng.IntN(200) == 0 {
					if s != nil {
						if err := s.Close(); err != nil {
							t.Errorf("session Close: %v", err)
						}
					}
					var err error
					if s, err = concurrency.NewSession(cli, concurrency.WithTTL(ttl)); err != nil {
						t.Errorf("NewSession: %v", err)
						return
					}
					sessions.Add(1)
				}
				m := lock.NewMutex(s, fmt.Sprintf("%s/%d", pfx, rng.IntN(locks)))
				// Deadlines from 0 to 50 ms: some before the read, some during
				// the claim, some while waiting, most after the hold.
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(50000))*time.Microsecond)
				var err error
				if rng.IntN(4) == 0 {
					err = m.TryLock(ctx)
				} else {
					err = m.Lock(ctx)
				}
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, concurrency.ErrLocked) {
						t.Errorf("cycle %d: %v", i, err)
					}
					continue
				}
				acquired.Add(1)
				if rng.IntN(3) == 0 {
					_ = m.Done()
				}
				for {
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+rng.IntN(5000))*time.Microsecond)
					err := m.Unlock(ctx)
					cancel()
					if err == nil {
						break
					}
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("Unlock: %v", err)
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)

	if got := c.Keys(pfx + "/"); len(got) != 0 {
		t.Errorf("keys left: %d (%q...)", len(got), got[0])
	}
	leases, err := c.Client.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(leases.Leases); n != 0 {
		t.Errorf("leases of closed sessions left: %d", n)
	}
	if got := watchwait.Entries(); got != 0 {
		t.Errorf("watch entries left: %d", got)
	}
	quietlocktest.WaitFor(t, "watchers and streams back to baseline", func() bool {
		st := c.Stats()
		return st.Watchers == base.Watchers && st.WatchStreams == base.WatchStreams
	})
	quietlocktest.WaitFor(t, "no goroutine of the library left", func() bool { return testutil.LibraryGoroutines() == 0 })
	// The server's index keeps every deleted key's history until compaction.
	if _, err := c.Client.Compact(t.Context(), c.Stats().Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	growth := int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
	t.Logf("%d cycles in %v: %d acquired, %d sessions; revisions %d; goroutines (process) %d -> %d; heap %d KiB -> %d KiB (%+d KiB, client and embedded server)",
		cycles, took.Round(time.Millisecond), acquired.Load(), sessions.Load(), c.Stats().Revision-base.Revision,
		g0, runtime.NumGoroutine(), m0.HeapAlloc>>10, m1.HeapAlloc>>10, growth>>10)
	if acquired.Load() == 0 {
		t.Error("no cycle acquired a lock")
	}
	// The raft log the server keeps in memory and its caches grow at first
	// and then stay bounded; a leak per cycle would show here.
	const bound = 64 << 20
	if growth > bound {
		t.Errorf("heap grew by %d MiB over %d cycles, more than %d MiB", growth>>20, cycles, bound>>20)
	}
}
