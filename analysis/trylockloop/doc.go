// Package trylockloop defines an analyzer that reports calls of etcd's
// concurrency.Mutex.TryLock (package go.etcd.io/etcd/client/v3/concurrency)
// that can run repeatedly.
//
// # Analyzer trylockloop
//
// trylockloop: report etcd concurrency.Mutex.TryLock calls that run in a loop
//
// A failed concurrency.Mutex.TryLock is not free: it puts the caller's key
// and then deletes it again, 2 revisions and 2 raft entries per attempt. A
// standby that retries TryLock in a loop therefore writes forever while
// another process holds the lock, until etcd refuses all writes with
// "mvcc: database space exceeded". Retrying on every event of a watch on the
// lock's prefix is worse: each failed attempt's put and delete are
// themselves events, so every waiting process wakes the others, a write
// storm.
//
// Use concurrency.Mutex.Lock, which waits on a watch without writing, or
// github.com/quietlock/quietlock/lock.Mutex, whose failed TryLock writes
// nothing. Neither is reported.
//
// # What is reported
//
// The diagnostic is at the TryLock call. A call is reported when:
//
//   - it is in the body, condition or post statement of a for or range
//     loop of the same function, whatever the loop waits on (time.Sleep, a
//     ticker, time.After in a select, a backoff, or nothing);
//   - it is in such a loop that ranges over, or receives from, an etcd
//     watch channel (any channel of clientv3.WatchResponse, such as a
//     clientv3.WatchChan); this gets its own message;
//   - it is in a function of the same package that such a loop calls,
//     directly or through other functions of the package; the message
//     names the loop and the function called there;
//   - it is in a function that is called recursively, or that is passed as
//     an argument to a function of the package that calls that parameter
//     in a loop (a hand-written retry helper).
//
// A loop whose body always ends in an unconditional return or break, and
// that has no continue or goto that could skip it, runs its body at most
// once and is not a loop for this analyzer. A loop that returns only after
// a successful TryLock is reported: it repeats for as long as TryLock fails.
//
// # How far it looks
//
// The analysis is per package; it uses no facts, so a loop in one package
// calling a helper in another is not seen. Only static calls are followed:
// calls of functions and methods declared in the package (not interface
// methods or function-typed fields), of function literals called where they
// are written (including with go and defer), of local variables bound once
// to a function literal and never reassigned or address-taken, and of
// function literals or package functions passed as an argument to a
// function of the package that calls the matching parameter in its own
// body (the parameter not being reassigned). A function passed to a
// function of another package (for example a retry library) is not
// followed, nor is TryLock called through an interface or a method value.
package trylockloop
