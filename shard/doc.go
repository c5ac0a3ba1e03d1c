// Package shard is leader election for many shards (partitions, tenants,
// queues) among a few processes: exactly one leader per shard, each process
// leading its share, on one lease per process.
//
//	r, err := shard.New(cli, "/my-service", hostname, shard.Callbacks{
//		OnStartedLeading: func(ctx context.Context, shard string, term *elect.Term) {
//			// Lead shard until ctx is done; fence writes with term.Txn.
//		},
//	}, shard.WithTTL(10*time.Second))
//	r.Add(shards...)
//	err = r.Run(ctx) // until ctx ends; then hands every shard over at once
//
// # What it costs etcd
//
// Each process keeps one lease, renewed on one clock (a renewal is not a
// raft entry), one membership key on that lease, written once when the
// process joins, and one watch on the whole prefix, whatever the number of
// shards. A shard's leader holds one key, as etcd's election would. While
// the leaders do not change, nothing is written: no revision and no raft
// entry, however many shards and processes there are.
//
// Every process sees every member and every leader key through its watch,
// and computes the same plan from them, so a shard without leader is
// claimed by the one process the plan gives it to: one conditional write,
// whatever the number of processes. A handover to balance costs two writes
// (the resignation and the claim); a join one more (the membership key) and
// a lease grant (a raft entry only); a graceful leave one (revoking the
// lease deletes all the process's keys at once).
//
// # Balance
//
// With n shards and m processes, each process leads floor(n/m) or
// ceil(n/m) shards once things settle: the ceil(n/m) shares go to the
// processes that joined first. A process that leads more than its share
// hands over the shards it prefers least (rendezvous hashing of the shard's
// name and the process's lease), and shards without leader go to the
// process under its share that prefers them most. So a shard moves only when
// the balance needs it: a join moves the newcomer's share, a leave what the
// leaver led. Handovers are graceful: the old leader's term ends, its
// callback returns, it deletes its key, and the new leader, which watches
// the prefix, claims at once.
//
// # Failure
//
// A process ends every term it has, cancelling their contexts, at the send
// time of the last renewal etcd answered plus the TTL minus the safety
// margin ([WithSafetyMargin]), measured on its own clock: a process cut off
// from etcd steps down from all its shards before etcd can expire its lease.
// It then revokes the lease if it can, and joins again with a new one once
// etcd answers. A crashed process's keys go when its lease expires, and
// the others claim its shards at once: within the TTL plus a claim. A
// shard's leader key is created only when the shard has none, so no two
// terms of a shard overlap in etcd; fence writes with each term's token, as
// with elect.Run.
//
// # Layout
//
// Under the prefix pfx, each process writes pfx/members/<lease ID in hex>
// (value: its identity), and each shard is an election on pfx/shards/<shard>
// with etcd's key layout (pfx/shards/<shard>/<lease ID in hex>, value: the
// leader's identity), so etcd's concurrency.Election, `etcdctl elect` and
// elect.Election can observe a shard.
//
// # Limits
//
// Give every process the same shards, and add or remove them on every
// process. A process plans from its own list: a shard that some processes
// do not know of (not yet, or no longer) can be planned for one of them,
// and stays without leader until all agree (or that process leaves).
// Shards led by keys that are no member's (etcd's own candidates, or any
// other key under a shard's election prefix) are left to them; they still
// count among the n shards, so with f of them the balance can be off by up
// to f.
package shard
