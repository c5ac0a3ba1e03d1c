package elect

import (
	"context"
	"fmt"
	"strings"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/internal/acquire"
)

// etcdElection lists the methods of concurrency.Election as of etcd client
// 3.7 (3.6's Observe returned a channel of values, not pointers). Election is
// asserted to have them; a test compares the full method sets with etcd's.
type etcdElection interface {
	Campaign(ctx context.Context, val string) error
	Proclaim(ctx context.Context, val string) error
	Resign(ctx context.Context) error
	Leader(ctx context.Context) (*clientv3.GetResponse, error)
	Observe(ctx context.Context) <-chan *clientv3.GetResponse
	Key() string
	Rev() int64
	Header() *pb.ResponseHeader
}

var _ etcdElection = (*Election)(nil)

// Election is a leader election on etcd, with the methods of etcd's
// concurrency.Election. Its candidates wait without writing.
//
// Campaign, Proclaim and Resign must not be called concurrently on one
// Election (as with etcd's); the other methods are safe to call at any time,
// from any goroutine. Use one Election per session and prefix.
type Election struct {
	s   *concurrency.Session
	pfx string // with the trailing "/"
	err error  // invalid input, returned by every call

	hooks *acquire.Hooks   // set by Run to count its requests
	hist  *acquire.History // contention seen by past campaigns; Run shares one across terms

	mu  sync.Mutex
	key string // leader key while this Election leads; "" otherwise
	rev int64  // its create revision
	hdr *pb.ResponseHeader
}

// NewElection returns an Election on prefix pfx for session s. It makes no
// request. A nil s or an empty pfx is reported by every method.
func NewElection(s *concurrency.Session, pfx string) *Election {
	e := &Election{s: s, pfx: pfx + "/", hist: new(acquire.History)}
	switch {
	case s == nil:
		e.err = ErrNilSession
	case pfx == "":
		e.err = ErrEmptyPrefix
	}
	return e
}

// ResumeElection returns an Election on prefix pfx for session s that
// leads with leaderKey, created at revision leaderRev: a leader that
// restarts with the same session can take its leadership back without a new
// campaign. It makes no request; [Election.Proclaim] and [Election.Resign]
// then act on leaderKey only while its create revision is still leaderRev.
//
// It mirrors etcd's concurrency.ResumeElection with one difference: etcd's
// keeps pfx as given, so that its Leader and Observe also see keys of
// sibling prefixes ("/a" also matches "/ab/..."), while this one adds the
// trailing "/" as [NewElection] does. A leaderKey that is not under pfx + "/",
// or a leaderRev that is not positive, is reported by every method as
// [ErrBadLeaderKey].
func ResumeElection(s *concurrency.Session, pfx string, leaderKey string, leaderRev int64) *Election {
	e := NewElection(s, pfx)
	switch {
	case e.err != nil:
	case !strings.HasPrefix(leaderKey, e.pfx) || len(leaderKey) == len(e.pfx) || leaderRev <= 0:
		e.err = fmt.Errorf("%w: %q at revision %d under %q", ErrBadLeaderKey, leaderKey, leaderRev, e.pfx)
	default:
		e.key, e.rev = leaderKey, leaderRev
	}
	return e
}

func (e *Election) usable() error {
	if e.err != nil {
		return e.err
	}
	select {
	case <-e.s.Done():
		return concurrency.ErrSessionExpired
	default:
		return nil
	}
}

func (e *Election) contender() acquire.Contender {
	return acquire.Contender{Session: e.s, Prefix: e.pfx, Pkg: "elect", Hooks: e.hooks, History: e.hist}
}

// Campaign waits until this candidate is elected, then returns nil with the
// leader key holding val. While another candidate leads it writes nothing
// (it has no key until it can win) and sends nothing: it watches the
// leader's key and tries again only when that key is deleted. If this
// session already leads, Campaign proclaims val and returns.
//
// Campaign returns concurrency.ErrSessionExpired as soon as the session ends
// (etcd's Campaign keeps waiting, or returns nil without leading), and ctx's
// error, unwrapped, when ctx ends first; in every error case nothing of this
// call is left in etcd. A claim in flight when ctx ends is completed (and
// undone), so Campaign can return up to about one second after ctx's end,
// never more (see the package documentation).
func (e *Election) Campaign(ctx context.Context, val string) error {
	if err := e.usable(); err != nil {
		return err
	}
	octx, stop := acquire.Overrun(ctx)
	defer stop()
	r, err := acquire.Acquire(ctx, e.contender(), val)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.key, e.rev, e.hdr = r.Owner.Key, r.Owner.CreateRev, r.Header
	e.mu.Unlock()
	if !r.Wrote && string(r.Value) != val {
		// We led already, with another value.
		if err := e.Proclaim(ctx, val); err != nil {
			rctx, cancel := context.WithTimeout(octx, acquire.WriteTimeout)
			defer cancel()
			_ = e.Resign(rctx)
			return err
		}
	}
	return nil
}

// Proclaim sets the leader's value without another election. It writes only
// if this Election's leader key still exists with the create revision it was
// elected with; otherwise it returns concurrency.ErrElectionNotLeader and the
// Election no longer leads. On any other error it still leads and Proclaim
// can be retried.
func (e *Election) Proclaim(ctx context.Context, val string) error {
	if e.err != nil {
		return e.err
	}
	e.mu.Lock()
	key, rev := e.key, e.rev
	e.mu.Unlock()
	if key == "" {
		return concurrency.ErrElectionNotLeader
	}
	resp, err := e.s.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, val, clientv3.WithLease(e.s.Lease()))).
		Commit()
	if err != nil {
		return wrapErr(ctx, err, "elect: proclaim %s", key)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !resp.Succeeded {
		e.clearLocked(key, rev)
		return concurrency.ErrElectionNotLeader
	}
	e.hdr = resp.Header
	return nil
}

// Resign gives up leadership, so that another candidate can be elected at
// once. It deletes the leader key only if it is still this Election's (same
// create revision), so a stale Resign never deletes a newer leader's key.
// The Election keeps leading until etcd has confirmed, so a failed Resign
// can be retried. Resign without leadership returns nil, as etcd's does.
func (e *Election) Resign(ctx context.Context) error {
	if e.err != nil {
		return e.err
	}
	e.mu.Lock()
	key, rev := e.key, e.rev
	e.mu.Unlock()
	if key == "" {
		return nil
	}
	resp, err := e.s.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return wrapErr(ctx, err, "elect: resign %s", key)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hdr = resp.Header
	e.clearLocked(key, rev)
	return nil
}

func (e *Election) clearLocked(key string, rev int64) {
	if e.key == key && e.rev == rev {
		e.key, e.rev = "", 0
	}
}

// Leader returns the current leader's key and value, or
// concurrency.ErrElectionNoLeader when there is none. It only reads.
func (e *Election) Leader(ctx context.Context) (*clientv3.GetResponse, error) {
	if e.err != nil {
		return nil, e.err
	}
	resp, err := e.s.Client().Get(ctx, e.pfx, clientv3.WithFirstCreate()...)
	if err != nil {
		return nil, wrapErr(ctx, err, "elect: leader of %s", e.pfx)
	}
	if len(resp.Kvs) == 0 {
		return nil, concurrency.ErrElectionNoLeader
	}
	return resp, nil
}

// Key returns the leader key while this Election leads, or "".
func (e *Election) Key() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.key
}

// Rev returns the fencing token while this Election leads: the create
// revision of its leader key, larger for every later term of anyone. It is 0
// when the Election does not lead.
func (e *Election) Rev() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rev
}

// Header returns the header of the latest response that elected, proclaimed
// or resigned, or nil before the first.
func (e *Election) Header() *pb.ResponseHeader {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.hdr
}

// wrapErr returns ctx's error, unwrapped, if ctx has ended (as etcd's
// methods do, so that err == context.Canceled holds; etcd also reports the
// caller's deadline as its own timeout), and otherwise err wrapped with a
// message made of format and args.
func wrapErr(ctx context.Context, err error, format string, args ...any) error {
	if cerr := acquire.CtxErr(ctx); cerr != nil {
		return cerr
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}
