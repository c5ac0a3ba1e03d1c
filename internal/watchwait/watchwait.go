// Package watchwait waits for the deletion of an owner's key in etcd without
// writing anything, sharing one etcd watch per key per client among all local
// waiters.
//
// A waiter joins with an [Owner]: a key, the create revision of the
// incarnation of that key it saw alive, and the store revision at which it
// saw it. It is woken when that incarnation is gone. Nothing else under the
// lock's prefix wakes it: create revisions only grow, so no new key can become
// owner ahead of the one being waited on.
//
// # Sharing
//
// Waiters on one key of one *clientv3.Client share one watch, kept in a
// registry keyed by that client pointer and that key (stable identities, never
// formatted values). The watch is cancelled, and its goroutine has exited, by
// the time the last waiter's [Waiter.Leave] returns; the registry then holds
// nothing for that key (during an etcd outage the goroutine may outlive Leave
// until the client reconnects or closes; see [Waiter.Leave]). All watches are
// opened on contexts that carry the same
// gRPC metadata (only [clientv3.WithRequireLeader]), so all of a client's
// watches share one gRPC watch stream.
//
// The registry is the one piece of package-level state in quietlock. It
// exists because the API mirrors etcd's (NewMutex takes a session and a
// prefix, nothing else), so two Mutexes of one client have no other place to
// meet. It holds an entry only while some waiter references it.
//
// # Failures
//
// Watches require a leader. On a compacted revision the key is read again
// and watched from the read's revision, so a deletion hidden by the
// compaction still wakes its waiters. On any other transient failure (no
// leader, a lost connection, a member restart) the watch is re-established
// from the next unseen revision after a backoff; no deletion is missed. When
// the client is closed, or etcd refuses the watch for good, waiters are woken
// with an error.
//
// # Turns
//
// When one deletion wakes several local waiters, [Waiter.Turn] lets them
// attempt one at a time. A waiter that leaves after its attempt can pass on
// what it saw (the next owner), so the next waiter can go straight back to
// waiting without a request of its own.
package watchwait

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/quietlock/quietlock/internal/retry"
)

// SubmitGrace bounds how long the release of a watch waits for a Watch call
// in progress to register (see Open); it matters only while etcd is
// unreachable.
const SubmitGrace = time.Second

// ErrClientClosed is the error of a waiter whose client was closed.
var ErrClientClosed = errors.New("watchwait: client closed")

// Owner is an observation: Key existed with create revision CreateRev at
// store revision Rev, as the first-created key under Prefix.
type Owner struct {
	Prefix    string
	Key       string
	CreateRev int64
	Rev       int64
}

// registry holds the entries in use. Lock order: registry.mu, then entry.mu.
var registry = struct {
	mu      sync.Mutex
	entries map[entryKey]*entry
}{entries: map[entryKey]*entry{}}

type entryKey struct {
	c   *clientv3.Client
	key string
}

// entry is one watched key of one client.
type entry struct {
	k      entryKey
	cancel context.CancelFunc
	exited chan struct{} // closed when run returns

	refs int // guarded by registry.mu

	// restarts counts the watches started after the first one (after a
	// compaction or a failure); see [Waiter.Restarts].
	restarts atomic.Int64

	mu sync.Mutex
	// gone is the watermark of what is known deleted: every incarnation of
	// the key created before revision gone no longer exists. It only grows.
	gone    int64
	err     error // set when the watch failed for good
	waiters map[*Waiter]struct{}
	hint    *Owner // latest owner reported by a waiter leaving its turn

	// turn holds one token; a woken waiter takes it to attempt, and puts
	// it back when it leaves.
	turn chan struct{}
}

// Waiter is one caller's interest in the deletion of one owner. It is used
// by one goroutine at a time and must be released with [Waiter.Leave].
type Waiter struct {
	e       *entry
	o       Owner
	deleted chan struct{}
	// wakeRev and err are written before deleted is closed and read after.
	wakeRev int64
	err     error
	hasTurn bool
	left    bool
	// restarts0 is the entry's restart count when the waiter joined.
	restarts0 int64
}

// Join registers a waiter for the deletion of o's incarnation of o.Key,
// starting or sharing the client's watch on that key. The watch covers every
// revision after o.Rev, so a deletion between the caller's read and Join is
// not missed. The caller must call [Waiter.Leave] exactly once, on every path.
func Join(c *clientv3.Client, o Owner) *Waiter {
	w := &Waiter{o: o, deleted: make(chan struct{})}
	k := entryKey{c: c, key: o.Key}

	registry.mu.Lock()
	e := registry.entries[k]
	if e == nil {
		e = startEntry(k, o.Rev)
		registry.entries[k] = e
	}
	e.refs++
	w.e = e
	w.restarts0 = e.restarts.Load()
	e.mu.Lock()
	registry.mu.Unlock()
	defer e.mu.Unlock()

	if e.err != nil {
		w.err = e.err
		close(w.deleted)
		return w
	}
	// o's incarnation being alive means every older one is gone.
	e.advanceLocked(o.CreateRev)
	if o.CreateRev < e.gone {
		w.wakeRev = e.gone
		close(w.deleted)
		return w
	}
	e.waiters[w] = struct{}{}
	return w
}

// GoneRev returns, once [Waiter.Deleted] is closed without an error, a
// revision by which the owner's incarnation was gone: keys created before
// it existed while the owner did.
func (w *Waiter) GoneRev() int64 { return w.wakeRev }

// Restarts returns how many times the watch this waiter shares had to be
// started again (after a compaction, a lost connection, no leader) since the
// waiter joined.
func (w *Waiter) Restarts() int64 { return w.e.restarts.Load() - w.restarts0 }

// Deleted returns a channel that is closed when the owner's incarnation is
// known to be deleted, or when the watch failed for good; [Waiter.Err] tells
// which. Only Join's caller closes it, never the caller of Deleted.
func (w *Waiter) Deleted() <-chan struct{} { return w.deleted }

// Err returns nil while waiting and after a deletion, and the reason the
// watch failed otherwise. Call it after Deleted is closed.
func (w *Waiter) Err() error {
	select {
	case <-w.deleted:
		return w.err
	default:
		return nil
	}
}

// Turn waits, after Deleted is closed, until no other woken waiter of this
// key on this client is attempting, and returns the latest owner that an
// earlier waiter saw after this waiter's deletion under the same prefix, or
// nil when there is none. It returns ctx.Err() if ctx ends first.
func (w *Waiter) Turn(ctx context.Context) (*Owner, error) {
	if w.hasTurn {
		return nil, errors.New("watchwait: turn already held")
	}
	select {
	case <-w.e.turn:
		w.hasTurn = true
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	w.e.mu.Lock()
	defer w.e.mu.Unlock()
	if h := w.e.hint; h != nil && h.Prefix == w.o.Prefix && h.Rev >= w.wakeRev {
		o := *h
		return &o, nil
	}
	return nil, nil
}

// Leave releases the waiter: it hands on its turn, if it holds one, with
// next (the owner its attempt saw, or nil), and drops its reference to the
// watch. When it is the last waiter on the key, Leave cancels the watch and
// returns after the watch's goroutine has exited, or after SubmitGrace if
// etcd is unreachable and the goroutine is still opening its watch (it then
// exits as soon as the client reconnects or closes). Leave is idempotent.
func (w *Waiter) Leave(next *Owner) {
	if w.left {
		return
	}
	w.left = true
	e := w.e

	e.mu.Lock()
	delete(e.waiters, w)
	if w.hasTurn && next != nil && next.Prefix == w.o.Prefix && (e.hint == nil || next.Rev > e.hint.Rev) {
		o := *next
		e.hint = &o
	}
	e.mu.Unlock()
	if w.hasTurn {
		w.hasTurn = false
		e.turn <- struct{}{} // never blocks: the token was ours
	}

	registry.mu.Lock()
	e.refs--
	last := e.refs == 0
	if last && registry.entries[e.k] == e {
		delete(registry.entries, e.k)
	}
	registry.mu.Unlock()
	if last {
		e.cancel()
		// The goroutine exits at once, unless its Watch call is stuck
		// opening a stream to an unreachable etcd: then it finishes that
		// call when the client reconnects or closes, cancels the watch and
		// exits, and Leave does not wait for it.
		select {
		case <-e.exited:
		case <-time.After(SubmitGrace):
		}
	}
}

// Entries returns how many keys are being watched, over all clients. It is
// zero whenever nobody waits.
func Entries() int {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	return len(registry.entries)
}

// Waiters returns how many waiters have joined and not left, over all
// clients and keys.
func Waiters() int {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	n := 0
	for _, e := range registry.entries {
		n += e.refs
	}
	return n
}

func startEntry(k entryKey, rev int64) *entry {
	ctx, cancel := context.WithCancel(context.Background())
	e := &entry{
		k:       k,
		cancel:  cancel,
		exited:  make(chan struct{}),
		waiters: map[*Waiter]struct{}{},
		turn:    make(chan struct{}, 1),
	}
	e.turn <- struct{}{}
	go e.run(ctx, rev+1)
	return e
}

// advanceLocked records that every incarnation created before rev is gone,
// and wakes the waiters of those incarnations.
func (e *entry) advanceLocked(rev int64) {
	if rev <= e.gone {
		return
	}
	e.gone = rev
	for w := range e.waiters {
		if w.o.CreateRev < rev {
			w.wakeRev = rev
			close(w.deleted)
			delete(e.waiters, w)
		}
	}
}

func (e *entry) advance(rev int64) {
	e.mu.Lock()
	e.advanceLocked(rev)
	e.mu.Unlock()
}

// fail wakes every waiter with err and removes the entry from the registry,
// so that later waiters start a fresh watch.
func (e *entry) fail(err error) {
	registry.mu.Lock()
	if registry.entries[e.k] == e {
		delete(registry.entries, e.k)
	}
	registry.mu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.err = err
	for w := range e.waiters {
		w.err = err
		close(w.deleted)
		delete(e.waiters, w)
	}
}

// run watches the key from rev until ctx is cancelled (the last waiter
// left) or the watch fails for good.
func (e *entry) run(ctx context.Context, rev int64) {
	defer close(e.exited)
	bo := retry.NewBackOff()
	if rev <= 1 {
		// No revision to start from: learn the key's state first.
		rev = 0
	}
	for first := true; ; first = false {
		if !first {
			e.restarts.Add(1)
		}
		if rev == 0 {
			r, err := e.reread(ctx)
			if err != nil {
				if !e.retryable(ctx, err) || retry.Sleep(ctx, bo.NextBackOff()) != nil {
					return
				}
				continue
			}
			rev = r + 1
		}
		next, err := e.watch(ctx, rev)
		if next > rev {
			rev = next
			bo.Reset()
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, rpctypes.ErrCompacted):
			// Revisions we have not seen are gone from history: read the
			// key's state now, then watch from there.
			rev = 0
			continue
		case !e.retryable(ctx, err):
			return
		}
		if retry.Sleep(ctx, bo.NextBackOff()) != nil {
			return
		}
	}
}

// retryable reports whether run should try again after err; when not, it
// has failed the entry (unless ctx ended, which is a normal release).
func (e *entry) retryable(ctx context.Context, err error) bool {
	switch {
	case ctx.Err() != nil:
		return false
	case e.k.c.Ctx().Err() != nil:
		e.fail(ErrClientClosed)
		return false
	case err != nil && retry.Permanent(err):
		e.fail(fmt.Errorf("watchwait: watch %q: %w", e.k.key, err))
		return false
	}
	return true
}

// watch runs one etcd watch from rev and applies its events. It returns the
// next revision not yet seen and the error that ended the watch (nil if the
// channel closed without one).
func (e *entry) watch(ctx context.Context, rev int64) (int64, error) {
	// Never abandon a Watch call in progress (see Open): Leave waits for
	// it only so long, and this goroutine finishes it otherwise.
	wch, stop := Open(ctx, e.k.c, e.k.key, 0, clientv3.WithRev(rev))
	defer stop()
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return rev, err
		}
		for _, ev := range wr.Events {
			switch ev.Type {
			case mvccpb.DELETE:
				e.advance(ev.Kv.ModRevision)
			case mvccpb.PUT:
				// A put that creates a new incarnation means the old one went.
				e.advance(ev.Kv.CreateRevision)
			}
		}
		if n := len(wr.Events); n > 0 {
			rev = wr.Events[n-1].Kv.ModRevision + 1
		} else if hr := wr.Header.GetRevision(); hr >= rev {
			// GetRevision is nil-safe, and compiles whether Header is a
			// value (etcd client 3.6) or a pointer (3.7 and later).
			rev = hr + 1
		}
	}
	return rev, nil
}

// Open opens an etcd watch on the client's shared watch stream: its context
// carries no gRPC metadata but [clientv3.WithRequireLeader], whatever ctx
// carries. The watch ends when ctx ends or stop is called; stop returns once
// the watch is cancelled and must be called on every path.
//
// clientv3 opens a client's watch stream inside Watch; if the Watch call's
// context ends before the new stream has accepted the request, the stream
// stays open with no watcher. So when ctx ends while the Watch call is in
// progress, the call is let finish first, for at most grace (forever if
// grace is 0), and only then is the watch cancelled, which closes a stream
// it leaves empty. A Watch call takes long only while etcd is unreachable.
func Open(ctx context.Context, c *clientv3.Client, key string, grace time.Duration, opts ...clientv3.OpOption) (wch clientv3.WatchChan, stop func()) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	submitted, released := make(chan struct{}), make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(released)
		var expired <-chan time.Time
		if grace > 0 {
			t := time.NewTimer(grace)
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-submitted:
		case <-expired:
		}
		cancel()
	})
	wch = c.Watch(wctx, key, opts...)
	close(submitted)
	return wch, func() {
		if !stopAfter() {
			<-released
		}
		cancel()
	}
}

// reread reads the key and records what its state says about older
// incarnations. It returns the revision of the read.
func (e *entry) reread(ctx context.Context) (int64, error) {
	resp, err := e.k.c.Get(ctx, e.k.key)
	if err != nil {
		return 0, err
	}
	if len(resp.Kvs) == 0 {
		// Absent at this revision: every incarnation created up to it is gone.
		e.advance(resp.Header.Revision + 1)
	} else {
		e.advance(resp.Kvs[0].CreateRevision)
	}
	return resp.Header.Revision, nil
}
