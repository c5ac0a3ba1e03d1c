// Package acquire is the zero-write way to take a prefix that lock.Mutex
// and elect.Election share: read the owner, write only when the prefix is
// empty, and otherwise wait in watchwait for the owner's key to be deleted.
//
// The owner of a prefix is the key with the lowest create revision under it,
// as in etcd's concurrency package. A contender's key is the prefix followed
// by its session's lease ID in hex.
package acquire

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

// WriteTimeout bounds each write that runs on after its caller's context
// has ended (a claim in flight, a cleanup), from when it is sent.
const WriteTimeout = 5 * time.Second

// MaxOverrun bounds how long after its context ends a call of this package
// returns. A claim in flight when ctx ends runs on, so that its outcome is
// known and a key it created can be removed; both the claim and that removal
// must finish within MaxOverrun of ctx's end. A claim whose outcome is still
// unknown then may leave the contender's key, attached to its session's
// lease, until the session ends or the contender's next call takes or
// removes it.
const MaxOverrun = time.Second

// Overrun returns a context for the writes that must run on after ctx ends:
// it is not cancelled with ctx, but ends MaxOverrun after ctx does (at its
// deadline or when it is cancelled). Call it when a
// call starts, and use the one context for every such write of the call, so
// that together they overrun ctx by MaxOverrun at most. stop releases it.
func Overrun(ctx context.Context) (octx context.Context, stop func()) {
	octx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var (
		mu      sync.Mutex
		timer   *time.Timer
		stopped bool
	)
	stopAfter := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			timer = time.AfterFunc(MaxOverrun, cancel)
		}
	})
	return octx, func() {
		stopAfter()
		mu.Lock()
		stopped = true
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

// errUnsure marks a claim whose outcome is unknown: the key may exist.
var errUnsure = errors.New("outcome of claim unknown")

// Contender is one session's claim on one prefix.
type Contender struct {
	Session *concurrency.Session
	Prefix  string   // ends with "/"
	Pkg     string   // prefix of error messages: "lock", "elect"
	Hooks   *Hooks   // optional
	History *History // optional: what past calls learnt of contention
}

// Hooks count what a contender sends and sees; each may be nil.
type Hooks struct {
	Attempt      func()        // an attempt that sends a request (a read, maybe a claim)
	Write        func()        // a write: a claim or the removal of a key
	WatchRestart func(n int64) // n restarts of the watch a wait used
}

func (h *Hooks) watchRestarts(n int64) {
	if h != nil && h.WatchRestart != nil && n > 0 {
		h.WatchRestart(n)
	}
}

func (h *Hooks) attempt() {
	if h != nil && h.Attempt != nil {
		h.Attempt()
	}
}

func (h *Hooks) write() {
	if h != nil && h.Write != nil {
		h.Write()
	}
}

// Key is the key the contender holds the prefix with.
func (c Contender) Key() string { return fmt.Sprintf("%s%x", c.Prefix, c.Session.Lease()) }

// Result is the owner of the prefix after an attempt.
type Result struct {
	Owner  watchwait.Owner
	Value  []byte             // the owner key's value
	Header *pb.ResponseHeader // of the response that named the owner
	Won    bool               // the owner is the contender's key
	Wrote  bool               // this attempt created the key
	Queue  bool               // keys other than the owner's wait under the prefix
}

// Try makes one attempt to take the prefix. It returns a Result with Won
// false when someone else owns it, having written nothing. On error nothing
// of this call is left in etcd; if ctx ended, the error is ctx's.
func Try(ctx context.Context, c Contender, val string) (Result, error) {
	octx, stop := Overrun(ctx)
	defer stop()
	r, err := c.attempt(ctx, octx, nil, false, val)
	if err != nil {
		return Result{}, c.abandon(ctx, ctx, octx, err, errors.Is(err, errUnsure))
	}
	return c.settle(ctx, octx, r)
}

// Acquire takes the prefix, waiting as long as ctx allows. While waiting it
// writes nothing and sends nothing: it watches the owner's key and attempts
// again only when that key is deleted. It returns
// concurrency.ErrSessionExpired as soon as the session ends and ctx's error
// when ctx ends first; on every error nothing of this call is left in etcd.
// Transient etcd errors are retried with a backoff. It returns within
// MaxOverrun of ctx's end.
func Acquire(ctx context.Context, c Contender, val string) (Result, error) {
	octx, stopOverrun := Overrun(ctx)
	defer stopOverrun()
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(c.Session.Ctx(), func() { cancel(concurrency.ErrSessionExpired) })
	defer stop()

	var (
		w      *watchwait.Waiter
		known  *watchwait.Owner // owner seen by the previous local attempter
		woken  bool             // the owner we waited on is gone
		unsure bool             // a claim of ours may have landed unseen
		bo     *backoff.ExponentialBackOff
		rounds int   // owners this call has waited on
		gone   int64 // revision by which the owner waited on last was gone
	)
	leave := func(next *watchwait.Owner) {
		if w != nil {
			w.Leave(next)
			w = nil
		}
	}
	defer leave(nil)
	fail := func(err error) (Result, error) {
		leave(nil)
		return Result{}, c.abandon(ctx, wctx, octx, err, unsure)
	}
	// again notes what a failed request may have left, and reports whether
	// to try again: after a backoff, if the error is transient.
	again := func(err error) bool {
		unsure = unsure || errors.Is(err, errUnsure)
		if wctx.Err() != nil || !retry.Transient(err) {
			return false
		}
		if bo == nil {
			bo = retry.NewBackOff()
		}
		return retry.Sleep(wctx, bo.NextBackOff()) == nil
	}
	for {
		r, err := c.attempt(wctx, octx, known, woken, val)
		known, woken = nil, false
		if err != nil {
			// Hand the turn on without an observation.
			leave(nil)
			if again(err) {
				continue
			}
			return fail(err)
		}
		// Hand the turn on with what this attempt saw, so the next local
		// waiter can go back to waiting without a request.
		leave(&r.Owner)
		if r.Won {
			c.History.won(rounds)
			return c.settle(ctx, octx, r)
		}
		bo = nil
		// A new owner whose key was created before the old owner was gone
		// was queued behind it, as etcd's waiters queue: others queue, and
		// waiting for an empty prefix could wait without bound.
		if gone > 0 && r.Owner.CreateRev < gone {
			r.Queue = true
		}
		if r.Queue {
			// Others wait in etcd's queue (etcd's Mutex or Election,
			// etcdctl): the prefix need not be empty again while they
			// come, so waiting for it could wait without bound. Take a
			// place in the queue instead, as they do: from here on, the
			// contender gets the prefix in their order.
			r, err := c.enqueue(wctx, octx, val)
			if err != nil {
				if again(err) {
					continue
				}
				return fail(err)
			}
			return c.settle(ctx, octx, r)
		}

		w = watchwait.Join(c.Session.Client(), r.Owner)
		select {
		case <-w.Deleted():
			c.Hooks.watchRestarts(w.Restarts())
		case <-wctx.Done():
			c.Hooks.watchRestarts(w.Restarts())
			return fail(wctx.Err())
		}
		if err := w.Err(); err != nil {
			return fail(fmt.Errorf("%s: waiting for %s: %w", c.Pkg, r.Owner.Key, err))
		}
		gone = w.GoneRev()
		rounds++
		// A contender that has seen others win before it waits for its
		// slot (see History) before it attempts, and then reads first: by
		// then a contender ahead of it has most likely taken the prefix,
		// which the read shows without costing a raft entry.
		delayed := false
		if d := c.History.delay(rounds); d > 0 {
			if err := retry.Sleep(wctx, d); err != nil {
				return fail(err)
			}
			delayed = true
		}
		if known, err = w.Turn(wctx); err != nil {
			return fail(err)
		}
		woken = known == nil && !delayed
	}
}

// attempt makes one try. It reads the owner (or takes known, an owner that
// another local waiter saw after the same deletion) and writes only when the
// prefix is empty, with a transaction that cannot put a key behind an owner.
// Right after the owner's deletion (woken) it skips the read and sends the
// claim at once: the claim is conditional anyway and names the owner when
// it fails, and the prefix is most likely empty then, so the read would only
// delay the handover.
//
// The claim is sent only while ctx lasts, and then runs on under octx (see
// [Overrun]) if ctx ends meanwhile, so that its outcome is known.
func (c Contender) attempt(ctx, octx context.Context, known *watchwait.Owner, woken bool, val string) (Result, error) {
	cli := c.Session.Client()
	me := c.Key()
	if known != nil && known.Key != me {
		return Result{Owner: *known}, nil
	}
	c.Hooks.attempt()
	if !woken {
		resp, err := cli.Get(ctx, c.Prefix, clientv3.WithFirstCreate()...)
		if err != nil {
			return Result{}, fmt.Errorf("%s: read %s: %w", c.Pkg, c.Prefix, err)
		}
		if len(resp.Kvs) > 0 {
			return c.saw(resp.Kvs[0], resp.Count, resp.Header), nil
		}
	}

	// A caller that has gone must not cost etcd a write: its turn may have
	// come just as its context ended.
	if err := CtxErr(ctx); err != nil {
		return Result{}, err
	}
	// The write runs to completion even if ctx is cancelled meanwhile, so
	// that its outcome is known and, if the caller has gone, undone.
	wctx, cancel := context.WithTimeout(octx, WriteTimeout)
	defer cancel()
	c.Hooks.write()
	tresp, err := cli.Txn(wctx).
		If(clientv3.Compare(clientv3.CreateRevision(c.Prefix), "=", 0).WithPrefix()).
		Then(clientv3.OpPut(me, val, clientv3.WithLease(c.Session.Lease()))).
		Else(clientv3.OpGet(c.Prefix, clientv3.WithFirstCreate()...)).
		Commit()
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return Result{}, concurrency.ErrSessionExpired
	case err != nil:
		return Result{}, fmt.Errorf("%s: claim %s: %w: %w", c.Pkg, me, errUnsure, err)
	case tresp.Succeeded:
		rev := tresp.Header.Revision
		return Result{
			Owner:  watchwait.Owner{Prefix: c.Prefix, Key: me, CreateRev: rev, Rev: rev},
			Value:  []byte(val),
			Header: tresp.Header,
			Won:    true,
			Wrote:  true,
		}, nil
	}
	rr := tresp.Responses[0].GetResponseRange()
	if len(rr.Kvs) == 0 {
		// The compare failed, so some key existed in the same revision.
		return Result{}, fmt.Errorf("%s: claim %s: failed with no owner at revision %d", c.Pkg, me, tresp.Header.Revision)
	}
	return c.saw(rr.Kvs[0], rr.Count, tresp.Header), nil
}

// saw is the result of a read that found kv first of count keys under the
// prefix.
func (c Contender) saw(kv *mvccpb.KeyValue, count int64, hdr *pb.ResponseHeader) Result {
	o := watchwait.Owner{Prefix: c.Prefix, Key: string(kv.Key), CreateRev: kv.CreateRevision, Rev: hdr.Revision}
	won := o.Key == c.Key()
	return Result{Owner: o, Value: kv.Value, Header: hdr, Won: won, Queue: !won && count > 1}
}

// settle returns a won result, unless this call's claim won after ctx had
// ended: then the key is removed again, so that a cancelled call holds
// nothing, and ctx's error is returned.
func (c Contender) settle(ctx, octx context.Context, r Result) (Result, error) {
	err := CtxErr(ctx)
	if !r.Wrote || err == nil {
		return r, nil
	}
	if rerr := c.remove(octx, r.Owner.CreateRev); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return Result{}, err
}

// abandon turns the error that ends an attempt into what the caller gets,
// and removes a key that a claim of unknown outcome may have left.
func (c Contender) abandon(ctx, wctx, octx context.Context, err error, unsure bool) error {
	switch cerr := CtxErr(ctx); {
	case cerr != nil:
		err = cerr
	case errors.Is(context.Cause(wctx), concurrency.ErrSessionExpired):
		err = concurrency.ErrSessionExpired
	}
	if unsure {
		if rerr := c.dropStray(octx); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// dropStray deletes the contender's key if a claim whose outcome was unknown
// created it. The key can exist only through such a claim: a claim is sent
// only when the prefix, and so the key, was found empty. octx is the call's
// [Overrun] context.
func (c Contender) dropStray(octx context.Context) error {
	ctx, cancel := context.WithTimeout(octx, WriteTimeout)
	defer cancel()
	resp, err := c.Session.Client().Get(ctx, c.Key())
	if err != nil {
		return fmt.Errorf("%s: remove %s after failed claim: %w", c.Pkg, c.Key(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return c.remove(ctx, resp.Kvs[0].CreateRevision)
}

// remove deletes the contender's key if its create revision is still rev.
// octx is the call's [Overrun] context.
func (c Contender) remove(octx context.Context, rev int64) error {
	ctx, cancel := context.WithTimeout(octx, WriteTimeout)
	defer cancel()
	c.Hooks.write()
	_, err := c.Session.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(c.Key()), "=", rev)).
		Then(clientv3.OpDelete(c.Key())).
		Commit()
	if err != nil {
		return fmt.Errorf("%s: remove %s: %w", c.Pkg, c.Key(), err)
	}
	return nil
}

// CtxErr is ctx.Err(), or context.DeadlineExceeded once ctx's deadline has
// passed even if its timer has not fired yet: etcd enforces the deadline on
// its side too and may answer "request timed out" first.
func CtxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// enqueue takes the prefix the way etcd's Mutex and Election do: put the
// contender's key (one write), then wait until every key created before it
// is deleted, watching the last of them each time. It is used only when
// others already queue that way, so that the contender gets the prefix in
// their order, counted from its put. On error its key is removed again
// (under octx, see [Overrun]) and nothing of the call is left in etcd.
func (c Contender) enqueue(ctx, octx context.Context, val string) (r Result, err error) {
	cli := c.Session.Client()
	me := c.Key()
	if err := CtxErr(ctx); err != nil {
		return Result{}, err
	}
	wctx, cancel := context.WithTimeout(octx, WriteTimeout)
	defer cancel()
	c.Hooks.write()
	tresp, err := cli.Txn(wctx).
		If(clientv3.Compare(clientv3.CreateRevision(me), "=", 0)).
		Then(clientv3.OpPut(me, val, clientv3.WithLease(c.Session.Lease()))).
		Else(clientv3.OpGet(me)).
		Commit()
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return Result{}, concurrency.ErrSessionExpired
	case err != nil:
		return Result{}, fmt.Errorf("%s: queue %s: %w: %w", c.Pkg, me, errUnsure, err)
	}
	rev, wrote := tresp.Header.Revision, tresp.Succeeded
	if !wrote {
		kvs := tresp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return Result{}, fmt.Errorf("%s: queue %s: key vanished at revision %d", c.Pkg, me, tresp.Header.Revision)
		}
		rev = kvs[0].CreateRevision
	}
	defer func() {
		if err != nil && wrote {
			if rerr := c.remove(octx, rev); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}()
	for {
		resp, err := cli.Get(ctx, c.Prefix, append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(rev-1))...)
		if err != nil {
			return Result{}, fmt.Errorf("%s: queue %s: read: %w", c.Pkg, me, err)
		}
		if len(resp.Kvs) == 0 {
			return Result{
				Owner:  watchwait.Owner{Prefix: c.Prefix, Key: me, CreateRev: rev, Rev: resp.Header.Revision},
				Value:  []byte(val),
				Header: resp.Header,
				Won:    true,
				Wrote:  wrote,
			}, nil
		}
		ahead := resp.Kvs[0]
		w := watchwait.Join(cli, watchwait.Owner{Prefix: c.Prefix, Key: string(ahead.Key), CreateRev: ahead.CreateRevision, Rev: resp.Header.Revision})
		select {
		case <-w.Deleted():
		case <-ctx.Done():
		}
		c.Hooks.watchRestarts(w.Restarts())
		werr := w.Err()
		w.Leave(nil)
		switch {
		case ctx.Err() != nil:
			return Result{}, ctx.Err()
		case werr != nil:
			return Result{}, fmt.Errorf("%s: queue %s: waiting for %s: %w", c.Pkg, me, ahead.Key, werr)
		}
	}
}
