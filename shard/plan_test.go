package shard

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func names(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("s%04d", i)
	}
	return s
}

func members(leases ...int64) []member {
	m := make([]member, len(leases))
	for i, l := range leases {
		m[i] = member{lease: l, joined: int64(100 + i)}
	}
	return m
}

// settle applies plans until nothing moves, as the runners would (each
// member resigns what the plan takes from it, then claims what it gives it),
// and returns the final owners and the number of moves.
func settle(t *testing.T, shards []string, ms []member, owners map[string]int64) (map[string]int64, int) {
	t.Helper()
	moves := 0
	for round := 0; ; round++ {
		if round > 10 {
			t.Fatalf("no fixed point after 10 rounds")
		}
		p := plan(shards, ms, owners)
		changed := false
		for _, s := range shards {
			if o, ok := owners[s]; ok && p[s] != o {
				delete(owners, s)
				changed = true
			}
		}
		p = plan(shards, ms, owners)
		for _, s := range shards {
			if _, ok := owners[s]; !ok && p[s] != 0 {
				owners[s] = p[s]
				moves++
				changed = true
			}
		}
		if !changed {
			return owners, moves
		}
	}
}

func spread(shards []string, ms []member, owners map[string]int64) (lo, hi int) {
	count := map[int64]int{}
	for _, s := range shards {
		count[owners[s]]++
	}
	lo, hi = len(shards), 0
	for _, m := range ms {
		lo, hi = min(lo, count[m.lease]), max(hi, count[m.lease])
	}
	return lo, hi
}

func TestPlanBalances(t *testing.T) {
	for _, n := range []int{0, 1, 7, 100, 1000} {
		for m := 1; m <= 7; m++ {
			shards := names(n)
			leases := make([]int64, m)
			for i := range leases {
				leases[i] = int64(0x7000 + i*13)
			}
			ms := members(leases...)
			owners, _ := settle(t, shards, ms, map[string]int64{})
			lo, hi := spread(shards, ms, owners)
			if len(owners) != n || lo != n/m || hi != (n+m-1)/m {
				t.Errorf("n=%d m=%d: %d led, min %d max %d; want %d led, %d..%d", n, m, len(owners), lo, hi, n, n/m, (n+m-1)/m)
			}
			if p := plan(shards, ms, owners); len(p) != len(owners) {
				t.Errorf("n=%d m=%d: settled owners are not the plan", n, m)
			} else {
				for s, o := range p {
					if owners[s] != o {
						t.Errorf("n=%d m=%d: settled owners are not a fixed point (%s)", n, m, s)
						break
					}
				}
			}
		}
	}
}

// A join moves only what the newcomer's share needs, a leave only what the
// leaver led, and the result is balanced either way.
func TestPlanMovesLittle(t *testing.T) {
	shards := names(1000)
	ms := members(11, 22, 33, 44)
	owners, _ := settle(t, shards, ms, map[string]int64{})

	joined := append(ms, member{lease: 55, joined: 200})
	after, moves := settle(t, shards, joined, clone(owners))
	if lo, hi := spread(shards, joined, after); lo != 200 || hi != 200 {
		t.Errorf("after a join: min %d max %d, want 200", lo, hi)
	}
	if moves != 200 {
		t.Errorf("a join moved %d shards, want 200", moves)
	}

	left := joined[1:]
	delete2 := clone(after)
	for s, o := range delete2 {
		if o == 11 {
			delete(delete2, s)
		}
	}
	final, moves := settle(t, shards, left, delete2)
	if lo, hi := spread(shards, left, final); lo != 250 || hi != 250 {
		t.Errorf("after a leave: min %d max %d, want 250", lo, hi)
	}
	if moves != 200 {
		t.Errorf("a leave moved %d shards, want the 200 the leaver led", moves)
	}
}

// Whatever the starting point (random owners, some not members, some
// shards without leader), the plan settles balanced.
func TestPlanFromAnyState(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		n, m := r.IntN(300), 1+r.IntN(6)
		shards := names(n)
		leases := make([]int64, m)
		for j := range leases {
			leases[j] = 1 + r.Int64N(1<<40)
		}
		ms := members(leases...)
		owners := map[string]int64{}
		for _, s := range shards {
			switch x := r.IntN(m + 2); {
			case x < m:
				owners[s] = leases[x]
			case x == m:
				owners[s] = -1 // a key that is no member's: left alone
			}
		}
		foreign := 0
		for _, o := range owners {
			if o == -1 {
				foreign++
			}
		}
		final, _ := settle(t, shards, ms, owners)
		lo, hi := spread(shards, ms, final)
		if foreign == 0 && (lo != n/m || hi != (n+m-1)/m) {
			t.Fatalf("case %d (n=%d m=%d): min %d max %d", i, n, m, lo, hi)
		}
		if hi-lo > 1+foreign {
			t.Fatalf("case %d (n=%d m=%d, %d foreign): min %d max %d", i, n, m, foreign, lo, hi)
		}
	}
}

func clone(m map[string]int64) map[string]int64 {
	c := make(map[string]int64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// settleStepwise moves one shard at a time, as the processes would with
// up-to-date views: it picks at random one pending action of the current
// plan (a member resigning a shard the plan takes from it, or the planned
// member claiming a shard without leader), applies it and plans again. It
// returns the number of claims.
func settleStepwise(t *testing.T, r *rand.Rand, shards []string, ms []member, owners map[string]int64) int {
	t.Helper()
	claims := 0
	for step := 0; ; step++ {
		if step > 4*len(shards)+10 {
			t.Fatalf("no fixed point after %d steps", step)
		}
		p := plan(shards, ms, owners)
		var pending []string
		for _, s := range shards {
			o, led := owners[s]
			if (led && p[s] != o && p[s] != 0) || (led && p[s] == 0 && o != -1) || (!led && p[s] != 0) {
				pending = append(pending, s)
			}
		}
		if len(pending) == 0 {
			return claims
		}
		s := pending[r.IntN(len(pending))]
		if _, led := owners[s]; led {
			delete(owners, s)
		} else {
			owners[s] = p[s]
			claims++
		}
	}
}

// Halfway through a handover the plan still agrees with the plan that
// started it: moving shards one at a time, in any order, a join claims
// exactly the newcomer's share, and a leave exactly what the leaver led.
func TestPlanStableWhileMoving(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	shards := names(1000)
	ms := members(11, 22, 33, 44, 55)
	owners := map[string]int64{}
	if got := settleStepwise(t, r, shards, ms, owners); got != 1000 {
		t.Fatalf("start: %d claims, want 1000", got)
	}
	joined := append(ms, member{lease: 66, joined: 300})
	if got := settleStepwise(t, r, shards, joined, owners); got != 166 {
		t.Errorf("join: %d claims, want 166 (the newcomer's share)", got)
	}
	if lo, hi := spread(shards, joined, owners); lo != 166 || hi != 167 {
		t.Errorf("after a join: min %d max %d", lo, hi)
	}
	led := 0
	for s, o := range owners {
		if o == 33 {
			delete(owners, s)
			led++
		}
	}
	left := slices.DeleteFunc(slices.Clone(joined), func(m member) bool { return m.lease == 33 })
	if got := settleStepwise(t, r, shards, left, owners); got != led {
		t.Errorf("leave: %d claims, want %d (what the leaver led)", got, led)
	}
	if lo, hi := spread(shards, left, owners); lo != 200 || hi != 200 {
		t.Errorf("after a leave: min %d max %d", lo, hi)
	}
}
