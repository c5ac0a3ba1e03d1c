package shard

import (
	"cmp"
	"hash/fnv"
	"slices"
)

// member is a process in the group: its lease, and when it joined (the
// create revision of its membership key).
type member struct {
	lease  int64
	joined int64
}

// plan returns the leader each shard of shards should have, as a lease ID (0
// for none yet), given the members and who leads each shard now (owners: a
// lease ID, absent for a shard without leader). Every process computes the
// same plan from the same view, so only the planned process claims a shard
// and a handover costs one claim.
//
// The plan leaves a shard with its leader while that leader leads no more
// than its share: with n shards and m members, the n mod m members that
// joined first may lead ceil(n/m) shards, the others floor(n/m). A member that leads more
// gives up the shards it prefers least; those and the shards without leader
// go, in name order, to the member under its share that prefers them most.
// Preference is rendezvous hashing of the shard's name and the member's
// lease, so that a shard moves only when the balance requires it.
//
// A plan is its own fixed point: once every shard is led as planned, the
// plan is the same, and nothing moves until a member joins or leaves or the
// shards change. A shard led by a key that is not a member's is left alone.
func plan(shards []string, members []member, owners map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(shards))
	if len(members) == 0 {
		return out
	}
	isMember := make(map[int64]bool, len(members))
	for _, m := range members {
		isMember[m.lease] = true
	}
	led := make(map[int64][]string, len(members))
	var free []string
	for _, s := range shards {
		o, ok := owners[s]
		switch {
		case !ok:
			free = append(free, s)
		case isMember[o]:
			led[o] = append(led[o], s)
		}
	}

	// The extra shares go to the members that joined first: an order that
	// does not change while shards move, so that a plan made halfway
	// through a handover agrees with the plan that started it.
	order := slices.Clone(members)
	slices.SortFunc(order, func(a, b member) int {
		return cmp.Or(cmp.Compare(a.joined, b.joined), cmp.Compare(a.lease, b.lease))
	})
	share := make(map[int64]int, len(order))
	for i, m := range order {
		share[m.lease] = len(shards) / len(order)
		if i < len(shards)%len(order) {
			share[m.lease]++
		}
	}

	count := make(map[int64]int, len(order))
	for _, m := range order {
		mine := led[m.lease]
		slices.SortFunc(mine, func(a, b string) int {
			return cmp.Or(cmp.Compare(prefer(b, m.lease), prefer(a, m.lease)), cmp.Compare(a, b))
		})
		keep := min(len(mine), share[m.lease])
		for _, s := range mine[:keep] {
			out[s] = m.lease
		}
		count[m.lease] = keep
		free = append(free, mine[keep:]...)
	}

	slices.Sort(free)
	for _, s := range free {
		var best member
		var bestScore uint64
		found := false
		for _, m := range order {
			if count[m.lease] >= share[m.lease] {
				continue
			}
			if sc := prefer(s, m.lease); !found || sc > bestScore || (sc == bestScore && m.lease < best.lease) {
				best, bestScore, found = m, sc, true
			}
		}
		if found {
			out[s] = best.lease
			count[best.lease]++
		}
	}
	return out
}

// prefer is how much the member with lease prefers to lead shard: the
// rendezvous hash of both.
func prefer(shard string, lease int64) uint64 {
	h := fnv.New64a()
	h.Write([]byte(shard))
	var b [9]byte
	b[0] = '/'
	for i := range 8 {
		b[1+i] = byte(lease >> (8 * i))
	}
	h.Write(b[:])
	return h.Sum64()
}
