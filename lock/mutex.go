package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/internal/retry"
	"github.com/quietlock/quietlock/internal/watchwait"
)

// writeTimeout bounds a write that runs on after its caller's context is
// cancelled, and the cleanup after a failed call.
const writeTimeout = 5 * time.Second

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

// errUnsure marks a claim whose outcome is unknown: the key may exist.
var errUnsure = errors.New("lock: outcome of claim unknown")

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

	mu   sync.Mutex
	key  string // key of the current hold; "" when none
	rev  int64  // its create revision
	hdr  *pb.ResponseHeader
	hold *hold // current or latest hold; nil before the first
}

// NewMutex returns a Mutex on prefix pfx for session s. It makes no request.
// A nil s or an empty pfx is reported by every method of the Mutex.
func NewMutex(s *concurrency.Session, pfx string) *Mutex {
	m := &Mutex{s: s, pfx: pfx + "/"}
	switch {
	case s == nil:
		m.err = ErrNilSession
	case pfx == "":
		m.err = ErrEmptyPrefix
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
// and etcd's errors, after which nothing of this call is left in etcd.
func (m *Mutex) TryLock(ctx context.Context) error {
	if err := m.usable(); err != nil {
		return err
	}
	_, won, err := m.attempt(ctx, nil)
	switch {
	case err != nil:
		return m.abandon(ctx, ctx, err, errors.Is(err, errUnsure))
	case won:
		return nil
	}
	return concurrency.ErrLocked
}

// Lock takes the lock, waiting as long as ctx allows. While it waits it
// writes nothing: it watches the current owner's key and tries again only
// when that key is deleted. It returns concurrency.ErrSessionExpired as soon
// as the session ends, and ctx.Err() when ctx ends first; in every error case
// nothing of this call is left in etcd.
func (m *Mutex) Lock(ctx context.Context) error {
	if err := m.usable(); err != nil {
		return err
	}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(m.s.Ctx(), func() { cancel(concurrency.ErrSessionExpired) })
	defer stop()

	var (
		w      *watchwait.Waiter
		known  *watchwait.Owner // owner seen by the previous local attempter
		unsure bool             // a claim of ours may have landed unseen
		bo     *backoff.ExponentialBackOff
	)
	defer func() {
		if w != nil {
			w.Leave(nil)
		}
	}()
	for {
		o, won, err := m.attempt(wctx, known)
		known = nil
		if w != nil {
			// Hand the turn on with what this attempt saw, so the next local
			// waiter can go back to waiting without a request.
			if err == nil {
				w.Leave(&o)
			} else {
				w.Leave(nil)
			}
			w = nil
		}
		if err != nil {
			unsure = unsure || errors.Is(err, errUnsure)
			if wctx.Err() == nil && retry.Transient(err) {
				if bo == nil {
					bo = retry.NewBackOff()
				}
				if retry.Sleep(wctx, bo.NextBackOff()) == nil {
					continue
				}
			}
			return m.abandon(ctx, wctx, err, unsure)
		}
		if won {
			return nil
		}
		bo = nil

		w = watchwait.Join(m.s.Client(), o)
		select {
		case <-w.Deleted():
		case <-wctx.Done():
			return m.abandon(ctx, wctx, wctx.Err(), unsure)
		}
		if err := w.Err(); err != nil {
			return m.abandon(ctx, wctx, fmt.Errorf("lock: waiting for %s: %w", o.Key, err), unsure)
		}
		if known, err = w.Turn(wctx); err != nil {
			return m.abandon(ctx, wctx, err, unsure)
		}
	}
}

// attempt makes one try at the lock. It reads the owner (or takes known,
// an owner another local waiter saw after the same deletion) and writes only
// when the prefix is empty, with a transaction that cannot put a key behind
// an owner. It returns the owner after the attempt and whether that is us.
func (m *Mutex) attempt(ctx context.Context, known *watchwait.Owner) (watchwait.Owner, bool, error) {
	c := m.s.Client()
	me := m.myKey()
	if known != nil && known.Key != me {
		return *known, false, nil
	}
	resp, err := c.Get(ctx, m.pfx, clientv3.WithFirstCreate()...)
	if err != nil {
		return watchwait.Owner{}, false, fmt.Errorf("lock: read %s: %w", m.pfx, err)
	}
	if len(resp.Kvs) > 0 {
		return m.saw(resp.Kvs[0], resp.Header)
	}

	// The write runs to completion even if ctx is cancelled meanwhile, so
	// that its outcome is known and, if the caller has gone, undone.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	tresp, err := c.Txn(wctx).
		If(clientv3.Compare(clientv3.CreateRevision(m.pfx), "=", 0).WithPrefix()).
		Then(clientv3.OpPut(me, "", clientv3.WithLease(m.s.Lease()))).
		Else(clientv3.OpGet(m.pfx, clientv3.WithFirstCreate()...)).
		Commit()
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return watchwait.Owner{}, false, concurrency.ErrSessionExpired
	case err != nil:
		return watchwait.Owner{}, false, fmt.Errorf("lock: claim %s: %w: %w", me, errUnsure, err)
	case tresp.Succeeded:
		rev := tresp.Header.Revision
		m.acquired(me, rev, tresp.Header)
		return watchwait.Owner{Prefix: m.pfx, Key: me, CreateRev: rev, Rev: rev}, true, nil
	}
	kvs := tresp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		// The compare failed, so some key existed in the same revision.
		return watchwait.Owner{}, false, fmt.Errorf("lock: claim %s: failed with no owner at revision %d", me, tresp.Header.Revision)
	}
	return m.saw(kvs[0], tresp.Header)
}

// saw records an owner read from etcd; if it is our key, we hold the lock.
func (m *Mutex) saw(kv *mvccpb.KeyValue, hdr *pb.ResponseHeader) (watchwait.Owner, bool, error) {
	o := watchwait.Owner{Prefix: m.pfx, Key: string(kv.Key), CreateRev: kv.CreateRevision, Rev: hdr.Revision}
	if o.Key != m.myKey() {
		return o, false, nil
	}
	m.acquired(o.Key, o.CreateRev, hdr)
	return o, true, nil
}

// abandon turns the error that ends a TryLock or Lock into what the caller
// gets, and removes a key that a claim of unknown outcome may have left.
func (m *Mutex) abandon(ctx, wctx context.Context, err error, unsure bool) error {
	switch cerr := ctxErr(ctx); {
	case cerr != nil:
		err = cerr
	case errors.Is(context.Cause(wctx), concurrency.ErrSessionExpired):
		err = concurrency.ErrSessionExpired
	}
	if unsure {
		if cerr := m.dropStray(ctx); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}
	return err
}

// ctxErr is ctx.Err(), or context.DeadlineExceeded once ctx's deadline has
// passed even if its timer has not fired yet: etcd enforces the deadline on
// its side too and may answer "request timed out" first.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// dropStray deletes this session's key under the prefix if a claim whose
// outcome was unknown created it and the Mutex does not hold it.
func (m *Mutex) dropStray(ctx context.Context) error {
	m.mu.Lock()
	held := m.key != ""
	m.mu.Unlock()
	if held {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	c := m.s.Client()
	me := m.myKey()
	resp, err := c.Get(ctx, me)
	if err == nil && len(resp.Kvs) > 0 {
		_, err = c.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(me), "=", resp.Kvs[0].CreateRevision)).
			Then(clientv3.OpDelete(me)).
			Commit()
	}
	if err != nil {
		return fmt.Errorf("lock: remove %s after failed claim: %w", me, err)
	}
	return nil
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
	if errors.Is(h.ended(), ErrKeyDeleted) {
		// The deletion was already seen: there is nothing to delete.
		reason = ErrKeyDeleted
	} else {
		h.unlocking.Store(true)
		resp, err := m.s.Client().Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
			Then(clientv3.OpDelete(key)).
			Commit()
		if err != nil {
			h.unlocking.Store(false)
			if cerr := ctxErr(ctx); cerr != nil {
				err = cerr
			}
			return fmt.Errorf("lock: unlock %s: %w", key, err)
		}
		if !resp.Succeeded {
			reason = ErrKeyDeleted
		}
	}
	m.mu.Lock()
	if m.hold == h {
		m.key, m.rev = "", 0
	}
	m.mu.Unlock()
	m.finish(h, reason)
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

// Key returns the key of the current hold, or "" when the Mutex holds none.
func (m *Mutex) Key() string {
	m.mu.Lock()
	defer m.mu.Unlock()
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
// 0 when the Mutex holds nothing.
func (m *Mutex) Rev() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev
}

// acquired records a hold of key created at rev.
func (m *Mutex) acquired(key string, rev int64, hdr *pb.ResponseHeader) {
	m.mu.Lock()
	m.hdr = hdr
	if m.key == key && m.rev == rev {
		m.mu.Unlock()
		return
	}
	old := m.hold
	m.key, m.rev = key, rev
	m.hold = newHold(key, rev, hdr.Revision)
	m.mu.Unlock()
	if old != nil {
		// A new incarnation of our key means the old one is gone.
		m.finish(old, ErrKeyDeleted)
	}
}
