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
// Candidates order themselves after a leader's deletion by what they have
// learnt of the contention, so that a handover costs a few raft entries,
// not one per waiting candidate; beside etcd's own candidates, which queue
// with a key each, a candidate takes its place in their queue (one write)
// and is elected in their order. Package lock's documentation ("Contention")
// describes both; [Run] keeps what it learnt across terms.
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
// # Health and readiness
//
// A [Health], given to [Run] with [WithHealth], tells a leader from a
// standby and a live process from one cut off from etcd, for load balancers
// and orchestrators: [Health.ReadyHandler] answers 200 only while this
// process leads ([ReadyLeader]) or while it is a live participant
// ([ReadyParticipant]), and [Health.HealthHandler] answers 503 once etcd has
// left this process's lease renewals, or its requests for a watch's
// progress, unanswered for longer than a bound: a standby that could not
// take over is unhealthy too. Checking health writes nothing to etcd. A ready leader is
// one whose term lasts by its own clock, as above; a fenced write is still
// what proves it to etcd.
//
// # Differences from concurrency.Election
//
// Campaign, Proclaim and Resign behave as etcd's do, with these deliberate
// differences: Campaign returns concurrency.ErrSessionExpired when its
// session ends; Key and Rev return "" and 0 while the Election does not lead
// (etcd's keep the last values, and return the candidate's key while it
// waits, though a waiting candidate here has no key); a Resign that fails
// keeps the Election leading, so it can be retried (etcd's forgets); an
// orphaned session (concurrency.Session.Orphan) counts as ended, so
// Campaign returns concurrency.ErrSessionExpired where etcd's goes on; and
// [ResumeElection] adds the trailing "/" to the prefix, as [NewElection]
// does (etcd's does not). Errors are etcd's own values where the API mirrors
// etcd's, and a method whose context has ended returns the context's error
// itself, as etcd's do. A claim in flight when Campaign's context ends is
// completed (and undone), within one second of the context's end.
//
// [Election.Observe], like etcd's, reports the latest leader after each
// change, not every term: a term that begins and ends between two of its
// reads is not reported.
package elect
