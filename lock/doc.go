// Package lock is a distributed mutex on etcd whose waiters write nothing.
//
// [Mutex] is a drop-in for etcd's concurrency.Mutex: the same constructor
// and methods, the same key layout (pfx + "/" + the session's lease ID in
// hex, owner = the key with the lowest create revision under pfx + "/"), so a
// [Mutex], a concurrency.Mutex and `etcdctl lock` on one prefix exclude each
// other.
//
// # What it costs etcd
//
//   - Waiting in [Mutex.Lock] writes nothing: no key, no revision, no raft
//     entry, however long and however many waiters. A waiter watches only the
//     current owner's key and makes a request only when that key is deleted
//     (or its own session ends). The exception is a queue of etcd's own
//     waiters (see Contention): then it puts its key once, as they do.
//   - A [Mutex.TryLock] that finds the lock held writes nothing. One that wins
//     writes one revision; one that finds this session already owning writes
//     nothing.
//   - Waiters on one client share one etcd watch per owner key, released with
//     the last of them, and all of a client's watches share one gRPC stream.
//   - When a deletion wakes several waiters of one client, they attempt one at
//     a time, and those after the first go back to waiting on the owner the
//     first one saw, without a request. Without contention the first sends
//     its conditional claim at once, without reading first: that is the
//     whole handover.
//
// # Contention
//
// Waiters hold no key, so they hold no place in a line. Left alone, every
// waiting client would send a claim when the owner leaves, one raft entry
// each, where etcd's queue costs one in all. Instead the waiters order
// themselves without writing: each knows how many owners it has waited on
// in its current call, and how many its latest winning call needed. The one
// that has waited as many as it needed last time (most likely the one that
// has waited longest) claims at once; each other waits a 2 ms slot per
// owner it is behind, then reads (free) and sees the new owner rather than
// sending a claim that fails. A waiter that has never had to let another
// win first, such as a lone standby, never delays. Until the waiters have
// each won once, one that has lost draws a random delay instead, from a
// window of 20 ms that doubles with each loss; while it waits it is not
// told of the next deletion, so fewer clients are woken by each (at the
// price of a p99 of tens of milliseconds while the waiters learn). Measured
// with 16 and 64 standbys on clients of their own: a handover costs a
// median of 2 raft entries (17 and 65 without the ordering), at about 2
// and 2.5 to 3 times the latency of etcd's queue, whose next waiter is the
// only one notified. See the README
// for the figures.
//
// etcd's own waiters (concurrency.Mutex, `etcdctl lock`) keep a key in a
// queue under the prefix, which is then never empty while they keep coming.
// A waiter that sees such a queue (keys under the prefix besides the
// owner's, or a new owner whose key was created before the old one was
// gone) takes its place in it as they do: it puts its key, the one write it
// makes while waiting and only then, and waits for the keys created before
// it. It then gets the lock in their first-come-first-served order, counted
// from when it saw the queue.
//
// # What it guarantees, and what it does not
//
// A hold is the existence of the Mutex's key in etcd, attached to the
// session's lease. It ends when [Mutex.Unlock] deletes the key, when the
// lease expires or is revoked (the session ends), or when anyone deletes the
// key. [Mutex.Done] and [Mutex.Err] report the end of a hold, but only after
// the fact: another client may already hold the lock by the time Done is
// closed, for example when this process was partitioned from etcd and its
// lease expired. Clocks are never compared across machines, but a paused or
// partitioned process can act on a hold it has already lost.
//
// So guard every write made under the lock with the fencing token: include
// [Mutex.IsOwner] in the transaction that writes, or compare your own stored
// token with [Mutex.Rev], which grows with every new hold. etcd then refuses
// a stale holder's write.
//
// # Errors and cleanup
//
// Every call that fails leaves nothing of its own in etcd: no key, no watch,
// no goroutine. A call whose context has ended sends no claim. A claim
// already in flight when the context ends is allowed to finish so that its
// outcome is known; if it won, it is undone and the call returns the
// context's error. Together these run on for at most one second after the
// context ends (its deadline, or its cancellation), so Lock and TryLock
// return within a second of their deadline. If etcd does not answer within
// that second, a claim whose outcome is still unknown may leave the key
// behind, attached to the session's lease: it goes with the session, or is
// taken over by this Mutex's next Lock or TryLock. Lock retries transient
// etcd errors (no leader, a lost connection) with a backoff; TryLock and
// Unlock return them.
//
// Where the API mirrors etcd's, errors are etcd's own values, unwrapped, so
// that code comparing with == keeps working: concurrency.ErrLocked,
// concurrency.ErrSessionExpired, concurrency.ErrLockReleased ([ErrNotHeld]
// is that same value), and the context's own error (context.Canceled,
// context.DeadlineExceeded) when a call's context has ended. Other errors
// from etcd are wrapped: test them with errors.Is.
//
// Invalid input (a nil session, an empty prefix, a bad option) is reported
// by every method with [ErrNilSession], [ErrEmptyPrefix] or [ErrBadOption];
// an ended session with concurrency.ErrSessionExpired. An orphaned session
// (concurrency.Session.Orphan) counts as ended: Lock and TryLock return
// concurrency.ErrSessionExpired, where etcd's go on.
//
// Do not share one session between two Mutexes on the same prefix: they map
// to the same key and so to the same hold, as with etcd's Mutex. Nor nest
// prefixes ("/a" and "/a/b"): as with etcd's Mutex, keys of "/a/b" count as
// contenders for "/a". There is no NewLocker: sync.Locker cannot report
// errors, and etcd's panics on them.
package lock
