//go:build go1.24

package quietlock_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/quietlock/quietlock/internal/watchwait"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

// K standbys on clients of their own pass the lock around, each rejoining
// once another has taken it. Once they have learnt the contention (K
// handovers), a handover costs a few raft entries, not one per standby:
// the median is asserted against a bound far below K+1, and every handover
// has exactly one winner and leaves exactly one key.
func TestHerdIsBounded(t *testing.T) {
	c := quietlocktest.New(t)
	const (
		pfx      = "/quietlock/test/herd"
		k        = 16
		warmup   = k
		measured = 20
	)
	ms := make([]*lock.Mutex, k+1)
	for i := range ms {
		ms[i] = lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx)
	}
	lockOrFatal(t, ms[0])
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	won := make(chan int, k+1)
	rejoin := make([]chan struct{}, k+1)
	for i := range ms {
		rejoin[i] = make(chan struct{}, 1)
		if i == 0 {
			continue
		}
		rejoin[i] <- struct{}{}
	}
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-rejoin[i]:
				case <-ctx.Done():
					return
				}
				if err := m.Lock(ctx); err != nil {
					return
				}
				won <- i
			}
		}()
	}
	holder := 0
	var entries []int64
	for h := range warmup + measured {
		// Everyone but the holder waits: k waiters.
		quietlocktest.WaitFor(t, "the standbys to wait", func() bool { return watchwait.Waiters() == k })
		before := c.Stats()
		unlockOrFatal(t, ms[holder])
		next := <-won
		// The others wait again, on the winner's key; no one else won.
		quietlocktest.WaitFor(t, "the losers to wait again", func() bool { return watchwait.Waiters() == k-1 })
		select {
		case i := <-won:
			t.Fatalf("handover %d: standbys %d and %d both won", h, next, i)
		default:
		}
		after := c.Stats()
		if keys := c.Keys(pfx + "/"); !slices.Equal(keys, []string{ms[next].Key()}) {
			t.Fatalf("handover %d: keys %q, want only the winner's", h, keys)
		}
		if got := after.Revision - before.Revision; got != 2 {
			t.Errorf("handover %d: %d revisions, want 2", h, got)
		}
		if h >= warmup {
			entries = append(entries, after.RaftIndex-before.RaftIndex)
		}
		rejoin[holder] <- struct{}{}
		holder = next
	}
	slices.Sort(entries)
	median := entries[len(entries)/2]
	t.Logf("raft entries per handover with %d standbys, after %d to learn: median %d, all %v", k, warmup, median, entries)
	// Without ordering each handover costs k+1 = 17. The bound leaves room
	// for a loaded machine, on which a slot can pass before a claim lands.
	if median > k/2 {
		t.Errorf("median raft entries per handover: got %d, want at most %d", median, k/2)
	}
	unlockOrFatal(t, ms[holder])
}
