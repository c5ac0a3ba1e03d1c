package lock

import (
	"fmt"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/internal/watchwait"
)

// hold is one tenure of the lock: from acquiring its key to the key's end.
type hold struct {
	key     string
	rev     int64 // create revision of key
	seenRev int64 // store revision at which key was known to exist

	done  chan struct{}
	once  sync.Once
	err   error  // written once, before done is closed
	onEnd func() // called once, when the hold ends

	// unlocking is set once Unlock has sent a delete. A watcher that sees
	// the key deleted after that waits for Unlock's answer, which tells
	// whose delete it saw: Unlock's (ErrUnlocked) or someone else's that
	// came first (ErrKeyDeleted).
	unlocking atomic.Bool
	decided   chan struct{} // closed by decide
	decideOne sync.Once
	verdict   error // written once, before decided is closed

	// exited is nil until a watcher goroutine is started by Done or Err,
	// and closed when that goroutine returns. Guarded by Mutex.mu.
	exited chan struct{}
}

func newHold(key string, rev, seenRev int64, onEnd func()) *hold {
	return &hold{key: key, rev: rev, seenRev: seenRev, done: make(chan struct{}), decided: make(chan struct{}), onEnd: onEnd}
}

// decide records why Unlock's delete found the hold ended; only the first
// call counts.
func (h *hold) decide(reason error) {
	h.decideOne.Do(func() {
		h.verdict = reason
		close(h.decided)
	})
}

// end ends the hold with reason err; only the first call counts.
func (h *hold) end(err error) {
	h.once.Do(func() {
		h.err = err
		close(h.done)
		h.onEnd()
	})
}

// ended returns why the hold ended, or nil while it lasts.
func (h *hold) ended() error {
	select {
	case <-h.done:
		return h.err
	default:
		return nil
	}
}

// Done returns a channel that is closed when the current hold ends: by
// [Mutex.Unlock], by the end of the session, by the deletion of the key by
// anyone, or when the hold can no longer be watched (the client was closed).
// Without a hold it returns the channel of the latest hold, closed, or a
// closed channel before the first hold. The Mutex closes it; it is never
// sent on.
//
// The first call for a hold starts one watch on the hold's key (shared with
// any local waiter on it) and one goroutine; both end with the hold. A
// Mutex whose Done and Err are never called costs nothing while it holds.
//
// Done reports the end of a hold after the fact (see the package
// documentation): guard writes with [Mutex.IsOwner] or [Mutex.Rev].
func (m *Mutex) Done() <-chan struct{} {
	if h := m.watched(); h != nil {
		return h.done
	}
	return closed
}

// Err returns nil while the current hold lasts and, once [Mutex.Done] is
// closed, why it ended. Like Done it speaks of one hold: after the next Lock
// it speaks of the new one. The reasons: [ErrUnlocked], [ErrKeyDeleted],
// concurrency.ErrSessionExpired, or a wrapped watch error. Before the first
// hold it returns [ErrNotHeld]; on an invalid Mutex, the input error.
func (m *Mutex) Err() error {
	if m.err != nil {
		return m.err
	}
	h := m.watched()
	if h == nil {
		return ErrNotHeld
	}
	return h.ended()
}

// watched returns the current or latest hold, making sure its end is being
// watched if it has not ended yet.
func (m *Mutex) watched() *hold {
	if m.err != nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.hold
	if h == nil || h.exited != nil || h.ended() != nil {
		return h
	}
	h.exited = make(chan struct{})
	w := watchwait.Join(m.s.Client(), watchwait.Owner{Prefix: m.pfx, Key: h.key, CreateRev: h.rev, Rev: h.seenRev})
	sessionDone := m.s.Done()
	go func() {
		defer close(h.exited)
		defer w.Leave(nil)
		select {
		case <-w.Deleted():
			switch err := w.Err(); {
			case err != nil:
				h.end(fmt.Errorf("lock: watching %s: %w", h.key, err))
			case h.unlocking.Load():
				// Unlock sent a delete; its answer says whether the
				// deletion seen was that delete or one before it.
				select {
				case <-h.decided:
					h.end(h.verdict)
				case <-h.done:
				}
			default:
				h.end(ErrKeyDeleted)
			}
		case <-sessionDone:
			h.end(concurrency.ErrSessionExpired)
		case <-h.done:
		}
	}()
	return h
}

// finish ends h with reason and waits for its watcher, if any, to exit.
func (m *Mutex) finish(h *hold, reason error) {
	h.end(reason)
	m.mu.Lock()
	exited := h.exited
	m.mu.Unlock()
	if exited != nil {
		<-exited
	}
}
