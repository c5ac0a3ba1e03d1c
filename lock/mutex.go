package lock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/quietlock/quietlock/internal/acquire"
	"github.com/quietlock/quietlock/internal/silent"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// etcdMutex lists the methods of concurrency.Mutex. Both types are asserted
// to have them, so the mirror cannot drift silently; a test also compares the
// full method sets.
type etcdMutex interface {
	Lock(ctx context.Context) error
	TryLock(ctx context.Context) error
	Unlock(ctx context.Context) error
	IsOwner() clientv3.Cmp
	Key() string
	Header() *pb.ResponseHeader
}

var (
	_ etcdMutex = (*concurrency.Mutex)(nil)
	_ etcdMutex = (*Mutex)(nil)
)

// closed is a channel that is always closed, for Done when nothing is held.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Mutex is a distributed mutex on etcd, with the methods of etcd's
// concurrency.Mutex plus [Mutex.Rev], [Mutex.Done] and [Mutex.Err].
//
// Lock, TryLock and Unlock must not be called concurrently on one Mutex (as
// with etcd's); the other methods are safe to call at any time, from any
// goroutine. Use one Mutex per session and prefix.
type Mutex struct {
	s   *concurrency.Session
	pfx string // with the trailing "/"
	err error  // invalid input, returned by every call

	log   *slog.Logger
	met   *metrics
	hooks *acquire.Hooks
	hist  acquire.History // contention seen by past calls; used by one call at a time

	mu   sync.Mutex
	key  string // key of the current hold; "" when none
	idle string // what Key returns without a hold: "" before any attempt, then "\x00"
	rev  int64  // its create revision
	hdr  *pb.ResponseHeader
	hold *hold // current or latest hold; nil before the first
}

// NewMutex returns a Mutex on prefix pfx for session s. It makes no request.
// A nil s, an empty pfx or an invalid option is reported by every method of
// the Mutex. Without options it is called as etcd's concurrency.NewMutex is.
//
// With [WithRegisterer], the Mutex keeps these metrics, labelled with the
// prefix: quietlock_lock_held and quietlock_lock_waiting (gauges),
// quietlock_lock_acquisitions_total, quietlock_lock_trylock_failures_total,
// quietlock_lock_writes_total and quietlock_lock_watch_restarts_total
// (counters), and quietlock_lock_wait_seconds (a histogram of how long Lock
// calls took). A waiting Lock moves only the waiting gauge: it sends
// nothing, so nothing is counted.
func NewMutex(s *concurrency.Session, pfx string, opts ...Option) *Mutex {
	m := &Mutex{s: s, pfx: pfx + "/", log: silent.Logger()}
	o, err := newOptions(opts)
	switch {
	case s == nil:
		m.err = ErrNilSession
	case pfx == "":
		m.err = ErrEmptyPrefix
	case err != nil:
		m.err = err
	}
	if m.err != nil {
		return m
	}
	if m.met, err = newMetrics(o.reg, m.pfx); err != nil {
		m.err = fmt.Errorf("%w: %w", ErrBadOption, err)
		return m
	}
	m.log = o.log
	m.hooks = &acquire.Hooks{
		Write:        m.met.writes.Inc,
		WatchRestart: func(n int64) { m.met.watchRestarts.Add(float64(n)) },
	}
	return m
}

// myKey is the key this Mutex's session holds or claims.
func (m *Mutex) myKey() string { return fmt.Sprintf("%s%x", m.pfx, m.s.Lease()) }

func (m *Mutex) usable() error {
	if m.err != nil {
		return m.err
	}
	select {
	case <-m.s.Done():
		return concurrency.ErrSessionExpired
	default:
		return nil
	}
}

// TryLock takes the lock if nobody holds it, and returns
// concurrency.ErrLocked otherwise, without writing anything in that case. If
// this session already holds the lock, TryLock succeeds without writing.
// Other errors: concurrency.ErrSessionExpired, ErrNilSession, ErrEmptyPrefix,
// ctx's error, and etcd's errors (wrapped); after any of them nothing of this
// call is left in etcd.
func (m *Mutex) TryLock(ctx context.Context) error {
	if err := m.usable(); err != nil {
		return err
	}
	r, err := acquire.Try(ctx, m.contender(), "")
	switch {
	case err != nil:
		m.failed()
		m.log.Warn("lock: trylock failed", "prefix", m.pfx, "err", err)
		return err
	case !r.Won:
		m.failed()
		m.met.tryFailures.Inc()
		return concurrency.ErrLocked
	}
	m.acquired(r)
	return nil
}

// Lock takes the lock, waiting as long as ctx allows. While it waits it
// writes nothing and sends nothing: it watches the current owner's key and
// tries again only when that key is deleted. Transient etcd errors (no
// leader, a lost connection) are retried with a backoff. It returns
// concurrency.ErrSessionExpired as soon as the session ends, and ctx's error
// when ctx ends first, even if a claim won meanwhile (the claim is undone);
// in every error case nothing of this call is left in etcd.
func (m *Mutex) Lock(ctx context.Context) error {
	if err := m.usable(); err != nil {
		return err
	}
	m.met.waiting.Inc()
	start := time.Now()
	r, err := acquire.Acquire(ctx, m.contender(), "")
	m.met.wait.Observe(time.Since(start).Seconds())
	m.met.waiting.Dec()
	if err != nil {
		m.failed()
		m.log.Debug("lock: lock failed", "prefix", m.pfx, "err", err)
		return err
	}
	m.acquired(r)
	return nil
}

// failed records an attempt that did not take the lock: without a hold, Key
// then returns "\x00", as etcd's does.
func (m *Mutex) failed() {
	m.mu.Lock()
	m.idle = noKey
	m.mu.Unlock()
}

// noKey is what Key returns once an attempt has failed or a hold has been
// unlocked, as etcd's Mutex does: not empty, so that a transaction built
// from Key and IsOwner is a harmless no-op rather than an invalid request.
const noKey = "\x00"

func (m *Mutex) contender() acquire.Contender {
	return acquire.Contender{Session: m.s, Prefix: m.pfx, Pkg: "lock", Hooks: m.hooks, History: &m.hist}
}

// Unlock releases the lock. It deletes the key only if it is still this
// hold's (same create revision), so a stale Unlock never deletes a newer
// holder's key. The Mutex keeps holding until etcd has confirmed, so a failed
// Unlock can be retried. If the key was already gone, Unlock returns nil and
// [Mutex.Err] says [ErrKeyDeleted]. Unlock without a hold returns
// [ErrNotHeld].
func (m *Mutex) Unlock(ctx context.Context) error {
	if m.err != nil {
		return m.err
	}
	m.mu.Lock()
	h, key, rev := m.hold, m.key, m.rev
	m.mu.Unlock()
	if key == "" {
		return ErrNotHeld
	}
	reason := ErrUnlocked
	switch ended := h.ended(); {
	case errors.Is(ended, ErrUnlocked):
		// An earlier Unlock's delete applied although that call failed.
	case errors.Is(ended, ErrKeyDeleted):
		// The deletion was already seen: there is nothing to delete.
		reason = ErrKeyDeleted
	default:
		// unlocking stays set once a delete has been sent, so that a retry
		// after a failed Unlock whose delete did apply is still reported as
		// our own unlock.
		tried := h.unlocking.Swap(true)
		m.met.writes.Inc()
		resp, err := m.s.Client().Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
			Then(clientv3.OpDelete(key)).
			Commit()
		if err != nil {
			if cerr := acquire.CtxErr(ctx); cerr != nil {
				// Bare, as etcd's Unlock returns it (etcd also reports the
				// caller's deadline as its own timeout).
				err = cerr
			} else {
				err = fmt.Errorf("lock: unlock %s: %w", key, err)
			}
			// The delete may have applied: a watcher that saw it takes it
			// for this Unlock's.
			h.decide(ErrUnlocked)
			m.log.Warn("lock: unlock failed", "key", key, "err", err)
			return err
		}
		if !resp.Succeeded && !tried {
			reason = ErrKeyDeleted
		}
		h.decide(reason)
	}
	m.mu.Lock()
	if m.hold == h {
		m.key, m.rev, m.idle = "", 0, noKey
	}
	m.mu.Unlock()
	m.finish(h, reason)
	m.log.Debug("lock: unlocked", "key", key, "reason", reason)
	return nil
}

// IsOwner returns a comparison that holds in a transaction only while this
// Mutex's hold is current: its key exists with the create revision it was
// acquired with. Without a hold it returns a comparison that never holds.
func (m *Mutex) IsOwner() clientv3.Cmp {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.key == "" {
		key := m.pfx
		if m.s != nil {
			key = m.myKey()
		}
		// No key has a negative create revision.
		return clientv3.Compare(clientv3.CreateRevision(key), "=", -1)
	}
	return clientv3.Compare(clientv3.CreateRevision(m.key), "=", m.rev)
}

// Key returns the key of the current hold. Without a hold it returns what
// etcd's Mutex does: "" before the first Lock or TryLock, and "\x00" after
// an Unlock or a failed attempt. (While Lock waits it returns the previous
// value: etcd's waiter already has a key, quietlock's does not.)
func (m *Mutex) Key() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.key == "" {
		return m.idle
	}
	return m.key
}

// Header returns the header of the response that acquired the current or
// latest hold, or nil before the first.
func (m *Mutex) Header() *pb.ResponseHeader {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hdr
}

// Rev returns the fencing token of the current hold: the create revision of
// its key, which is larger for every later hold of the lock by anyone. It is
// 0 when the Mutex holds nothing. A hold that ended without Unlock (its key
// deleted, its session gone) keeps its token until Unlock: [Mutex.Err] tells
// whether the hold still lasts.
func (m *Mutex) Rev() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev
}

// acquired records the hold that r won.
func (m *Mutex) acquired(r acquire.Result) {
	key, rev := r.Owner.Key, r.Owner.CreateRev
	m.mu.Lock()
	m.hdr = r.Header
	if m.key == key && m.rev == rev && m.hold.ended() == nil {
		m.mu.Unlock()
		return
	}
	old := m.hold
	m.key, m.rev = key, rev
	m.hold = newHold(key, rev, r.Header.Revision, func() { m.met.held.Set(0) })
	m.mu.Unlock()
	if old != nil {
		// A new hold means the old one is over, whatever was last seen of it.
		m.finish(old, ErrKeyDeleted)
	}
	m.met.acquisitions.Inc()
	m.met.held.Set(1)
	m.log.Debug("lock: acquired", "key", key, "rev", rev)
}
