// Package elect is leader election on etcd for primary/standby services:
// [Election], a drop-in for etcd's concurrency.Election whose candidates
// wait without writing, and [Run], a runner that services embed.
//
// # What it costs etcd
//
// A candidate that is not elected has no key and writes nothing: no
// revision, no raft entry, however long it waits. It watches only the
// leader's key and tries again only when that key is deleted (or its own
// session ends). Keys use etcd's layout (pfx + "/" + lease ID in hex, value =
// the proclaimed value, leader = lowest create revision), so [Election],
// concurrency.Election and `etcdctl elect` on one prefix interoperate.
//
// # What it guarantees, and what it does not
//
// Leadership is the existence of the leader's key, attached to its session's
// lease. etcd alone decides when that lease expires. [Run] ends a term, and
// cancels the term's context, before etcd can expire the lease: at the send
// time of the last renewal etcd answered plus the TTL, minus a safety
// margin, all measured on the leader's own clock. No clocks are compared
// across machines; the margin must cover this process's own delays (a
// stop-the-world pause, an overloaded scheduler) and the time the leader
// needs to stop acting once its context is cancelled. A process paused for
// longer than the margin can still act after its term ended. An operator who
// deletes the key or revokes the lease ends the term at once, and the old
// leader learns of it only after the fact.
//
// So fence every write made as leader with the term's token: build it with
// [Term.Txn] (or include [Term.Guard], or [Election.Rev] through a
// create-revision comparison), and etcd refuses it from a leader whose term
// has ended.
//
// The early step-down needs a direct connection to etcd: through etcd's gRPC
// proxy, a renewal may be answered from an older renewal of the proxy's own.
//
// [Election] alone does not step down early: its leadership ends when the key
// goes, and [Election.Observe] reports that after the fact. Use [Run] for a
// leader that must not overlap with its successor.
//
// # Differences from concurrency.Election
//
// Campaign, Proclaim and Resign behave as etcd's do, with these deliberate
// differences: Campaign returns concurrency.ErrSessionExpired when its
// session ends; Key and Rev return "" and 0 while the Election does not lead
// (etcd's keep the last values, and return the candidate's key while it
// waits, though a waiting candidate here has no key); and a Resign that fails
// keeps the Election leading, so it can be retried (etcd's forgets).
package elect
