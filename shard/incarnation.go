package shard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/internal/acquire"
	"github.com/quietlock/quietlock/internal/leaseclock"
	"github.com/quietlock/quietlock/internal/retry"
)

// incarnation is the state of one lease of a runner: what its loop, the one
// goroutine that decides, knows and has under way.
type incarnation struct {
	r     *Runner
	ctx   context.Context // Run's
	lease int64
	n     *notifier

	deadline time.Time // the lease cannot expire before: all terms end then
	joinRev  int64     // revision of the latest write of the membership key
	mir      *mirror
	terms    map[string]*term // by shard, from the start of a term until it has finished
	busy     map[string]bool  // shards with a write in flight ("": the membership key)
	inflight int

	// ended is, by shard, the largest token of a term of this incarnation
	// that has ended: a key of ours that old is never led again (a stale
	// watch event can show it after its deletion), only deleted.
	ended map[string]int64
	// After a write fails, no write is sent until pause, on a backoff.
	pause time.Time
	bo    *backoff.ExponentialBackOff
	wake  *time.Timer // fires at pause
	fatal error       // a write's error that cannot go away: Run returns it

	results  chan result
	finished chan finish
	quit     chan struct{} // closed when the loop stops reading results and finished
	released chan struct{} // closed once the lease is revoked, or given up
	resigns  chan struct{} // a semaphore for resignations
	writes   sync.WaitGroup
	endings  sync.WaitGroup
}

// term is one term of one shard.
type term struct {
	shard string
	t     *elect.Term
	end   context.CancelCauseFunc
	ended bool          // end was called
	done  chan struct{} // closed when OnStartedLeading has returned
}

// How a term's key goes when the term ends.
type release int

const (
	releaseKey   release = iota // delete it (a handover)
	releaseNone                 // it is gone already
	releaseLease                // the incarnation revokes its lease
)

// result is the outcome of a write of the loop's: a claim, the cleanup of
// a key of ours without a term, or the membership key written again.
type result struct {
	shard     string // "" for the membership key
	claim     bool
	ok        bool  // the claim won, the key was deleted, or the membership key written
	rev       int64 // of the response
	createRev int64 // of our key, when a claim won or a cleanup deleted it
	// seen is what a write that found etcd other than the mirror showed read
	// instead: the shard's leader key (a claim), or our key (a cleanup); nil
	// if there is none.
	seen *mvccpb.KeyValue
	err  error
}

// finish reports a term that has ended and whose callbacks have returned.
type finish struct {
	t         *term
	deletedAt int64 // revision of the resignation that deleted its key, or 0
}

func (s *incarnation) key(shard string) string {
	return s.r.pfx + shardsDir + shard + "/" + leaseKey("", s.lease)
}

// errLeaseLost ends an incarnation whose lease etcd no longer has.
var errLeaseLost = fmt.Errorf("shard: lease gone: %w", concurrency.ErrSessionExpired)

// loop runs the incarnation until ctx ends or the lease is lost or may be.
func (s *incarnation) loop(updates <-chan update, renewals <-chan leaseclock.Renewal) error {
	expire := time.NewTimer(time.Until(s.deadline))
	defer expire.Stop()
	s.wake = time.NewTimer(time.Hour)
	s.wake.Stop()
	defer s.wake.Stop()
	for {
		// The deadline first, whatever else is ready: no term may outlive it.
		if !time.Now().Before(s.deadline) {
			s.stop(elect.ErrLeaseDeadline)
			return fmt.Errorf("shard: lease %x: %w", s.lease, elect.ErrLeaseDeadline)
		}
		select {
		case <-s.ctx.Done():
			s.stop(elect.ErrResigned)
			return nil
		case <-expire.C:
			continue
		case rn := <-renewals:
			switch {
			case errors.Is(rn.Err, leaseclock.ErrLeaseGone):
				s.fatal = errLeaseLost
			case rn.Err != nil:
				s.r.o.log.Debug("shard: lease renewal failed", "prefix", s.r.pfx, "err", rn.Err, "deadline", s.deadline)
			case rn.Deadline.After(s.deadline):
				s.deadline = rn.Deadline
				expire.Reset(time.Until(s.deadline))
			}
		case u := <-updates:
			s.mir.apply(u)
		case res := <-s.results:
			s.done(res)
		case f := <-s.finished:
			if s.terms[f.t.shard] == f.t {
				delete(s.terms, f.t.shard)
			}
			if f.deletedAt > 0 {
				s.mir.forget(f.t.t.Key, f.t.t.Token)
			}
		case <-s.wake.C:
		case <-s.r.kick:
		}
		if s.fatal != nil {
			reason := s.fatal
			if errors.Is(reason, errLeaseLost) {
				reason = concurrency.ErrSessionExpired
			}
			s.stop(reason)
			return s.fatal
		}
		if s.mir.rev > 0 { // not before the first read
			s.reconcile()
		}
	}
}

// done records the outcome of a write.
func (s *incarnation) done(res result) {
	s.inflight--
	delete(s.busy, res.shard)
	switch {
	case errors.Is(res.err, rpctypes.ErrLeaseNotFound):
		s.fatal = errLeaseLost
		return
	case res.err != nil && retry.Permanent(res.err):
		s.fatal = fmt.Errorf("shard: write under %s: %w", s.r.pfx, res.err)
		return
	case res.err != nil:
		// The write failed (a claim reads back what its answer did not
		// tell). Send none for a while.
		s.pauseWrites(res.err)
		return
	}
	if res.ok {
		s.bo.Reset()
	}
	switch {
	case res.shard == "":
		s.joinRev = res.rev
	case !res.ok:
		// etcd is ahead of the watch: take what the write read instead.
		// The watch brings the same, and later changes, in order.
		s.r.o.log.Debug("shard: write found the shard changed", "prefix", s.r.pfx, "shard", res.shard, "claim", res.claim, "revision", res.rev)
		switch {
		case res.rev <= s.mir.rev:
			// The mirror is as recent as the write's read already.
		case res.seen != nil:
			s.mir.put(string(res.seen.Key), res.seen.CreateRevision, string(res.seen.Value))
		case !res.claim:
			s.mir.forget(s.key(res.shard), res.createRev)
		}
	case res.claim && res.createRev > s.mir.rev:
		// Ahead of the watch; its event for this key will say the same.
		s.mir.put(s.key(res.shard), res.createRev, s.r.identity)
	case !res.claim:
		s.mir.forget(s.key(res.shard), res.createRev)
	}
}

// pauseWrites sends no write until a backoff has passed.
func (s *incarnation) pauseWrites(err error) {
	d := s.bo.NextBackOff()
	s.pause = time.Now().Add(d)
	s.wake.Reset(d)
	s.r.o.log.Warn("shard: write failed; pausing writes", "prefix", s.r.pfx, "pause", d, "err", err)
}

// writable reports whether a write may be sent for shard ("": the
// membership key) now.
func (s *incarnation) writable(shard string) bool {
	return !s.busy[shard] && s.inflight < s.r.o.inflight && !time.Now().Before(s.pause)
}

// reconcile compares what the mirror shows with the plan and acts on the
// difference: it ends terms, claims shards, and takes or deletes keys of
// its own that no term holds. Everything it starts reports back to loop.
func (s *incarnation) reconcile() {
	r := s.r
	r.mu.Lock()
	shards := make([]string, 0, len(r.shards))
	for sh := range r.shards {
		shards = append(shards, sh)
	}
	r.mu.Unlock()
	slices.Sort(shards)
	wanted := make(map[string]bool, len(shards))
	for _, sh := range shards {
		wanted[sh] = true
	}

	members := make([]member, 0, len(s.mir.members))
	for l, e := range s.mir.members {
		members = append(members, member{lease: l, joined: e.createRev})
	}
	r.m.members.Set(float64(len(members)))
	_, joined := s.mir.members[s.lease]
	if !joined && s.mir.rev >= s.joinRev && s.writable("") {
		// Someone deleted our membership key: without it the others count
		// our shards as no member's. Write it again.
		s.rejoin()
	}
	owners := make(map[string]int64, len(shards))
	for _, sh := range shards {
		if _, e, ok := s.mir.leader(sh); ok {
			owners[sh] = e.lease // 0 for a key that is no member's: left alone
		}
	}
	var p map[string]int64
	if joined {
		p = plan(shards, members, owners)
	}
	live := time.Now().Before(s.deadline)

	for sh, t := range s.terms {
		if t.ended {
			continue
		}
		e, ok := s.mir.shards[sh][t.t.Key]
		switch {
		case (!ok || e.createRev != t.t.Token) && s.mir.rev >= t.t.Token:
			s.end(t, elect.ErrKeyDeleted, releaseNone)
		case !wanted[sh]:
			s.end(t, ErrRemoved, releaseKey)
		case joined && p[sh] != s.lease:
			s.end(t, ErrRebalanced, releaseKey)
		}
	}

	// Keys of ours that no term holds: a claim won ahead of the watch,
	// a claim whose shard was given to another meanwhile, or a key whose
	// term has ended and that was not deleted.
	for sh, keys := range s.mir.shards {
		key := s.key(sh)
		e, ok := keys[key]
		if !ok || s.terms[sh] != nil || s.busy[sh] {
			continue
		}
		if lk, _, _ := s.mir.leader(sh); lk == key && wanted[sh] && joined && p[sh] == s.lease && live && e.createRev > s.ended[sh] {
			s.start(sh, e.createRev)
			continue
		}
		if s.writable(sh) {
			s.cleanup(sh, e.createRev)
		}
	}

	if joined && live {
		for _, sh := range shards {
			if _, led := owners[sh]; led || p[sh] != s.lease || s.terms[sh] != nil || !s.writable(sh) {
				continue
			}
			s.claim(sh)
		}
	}
	s.report(shards)
}

// report passes changes of the shards' leaders to OnNewLeader and Leaders.
func (s *incarnation) report(shards []string) {
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, sh := range shards {
		id := ""
		if _, e, ok := s.mir.leader(sh); ok {
			id = e.value
		}
		if last, seen := s.n.reported[sh]; seen && last == id {
			continue
		}
		s.n.reported[sh] = id
		if id == "" {
			delete(r.leaders, sh)
		} else {
			r.leaders[sh] = id
		}
		s.n.notify(sh, id)
	}
	for sh := range s.n.reported {
		if !r.shards[sh] {
			delete(s.n.reported, sh)
			delete(r.leaders, sh)
		}
	}
}

// claim creates our key of shard if the shard has no key at all. When the
// answer is lost it reads the key back, so that its outcome is known.
func (s *incarnation) claim(sh string) {
	key, pfx := s.key(sh), s.r.pfx+shardsDir+sh+"/"
	s.write(sh, true, func(ctx context.Context) result {
		resp, err := s.r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(pfx), "=", 0).WithPrefix()).
			Then(clientv3.OpPut(key, s.r.identity, clientv3.WithLease(clientv3.LeaseID(s.lease)))).
			Else(clientv3.OpGet(pfx, clientv3.WithFirstCreate()...)).
			Commit()
		if err == nil {
			res := result{ok: resp.Succeeded, rev: resp.Header.Revision, createRev: resp.Header.Revision}
			if !resp.Succeeded {
				if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
					res.seen = kvs[0]
				}
			}
			return res
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) || retry.Permanent(err) {
			return result{err: err}
		}
		// Lost answer or refusal: a read tells which.
		if got, rerr := s.r.cli.Get(ctx, key); rerr == nil && len(got.Kvs) == 1 {
			return result{ok: true, rev: got.Header.Revision, createRev: got.Kvs[0].CreateRevision}
		}
		return result{err: err}
	})
}

// rejoin writes the membership key again.
func (s *incarnation) rejoin() {
	key := s.r.pfx + leaseKey(membersDir, s.lease)
	s.write("", false, func(ctx context.Context) result {
		resp, err := s.r.cli.Put(ctx, key, s.r.identity, clientv3.WithLease(clientv3.LeaseID(s.lease)))
		if err != nil {
			return result{err: err}
		}
		return result{ok: true, rev: resp.Header.Revision}
	})
}

// cleanup deletes our key of shard, if it still has createRev.
func (s *incarnation) cleanup(sh string, createRev int64) {
	key := s.key(sh)
	s.write(sh, false, func(ctx context.Context) result {
		resp, err := s.r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", createRev)).
			Then(clientv3.OpDelete(key)).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			return result{err: err}
		}
		res := result{ok: resp.Succeeded, rev: resp.Header.Revision, createRev: createRev}
		if !resp.Succeeded {
			if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
				res.seen = kvs[0]
			}
		}
		return res
	})
}

// write runs w to completion, bounded, and reports its outcome to loop.
func (s *incarnation) write(sh string, claim bool, w func(context.Context) result) {
	s.busy[sh] = true
	s.inflight++
	s.writes.Add(1)
	go func() {
		defer s.writes.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), acquire.WriteTimeout)
		defer cancel()
		s.r.m.writes.Inc()
		res := w(ctx)
		res.shard, res.claim = sh, claim
		select {
		case s.results <- res:
		case <-s.quit:
		}
	}()
}

// start starts a term of shard with our key, created at token.
func (s *incarnation) start(sh string, token int64) {
	r := s.r
	t := &term{shard: sh, t: elect.NewTerm(r.cli, r.identity, s.key(sh), token), done: make(chan struct{})}
	ctx, end := context.WithCancelCause(context.WithoutCancel(s.ctx))
	t.end = end
	s.terms[sh] = t
	r.mu.Lock()
	r.leading[sh] = t.t
	r.mu.Unlock()
	r.m.leading.Inc()
	r.m.terms.Inc()
	r.o.log.Info("shard: leading", "prefix", r.pfx, "shard", sh, "identity", r.identity, "token", token)
	go func() {
		defer close(t.done)
		if r.cb.OnStartedLeading != nil {
			r.cb.OnStartedLeading(ctx, sh, t.t)
		}
	}()
}

// end ends term t for reason: it cancels the term's context at once, then,
// once OnStartedLeading has returned, releases the key as rel says, calls
// OnStoppedLeading, and reports to loop.
func (s *incarnation) end(t *term, reason error, rel release) {
	r := s.r
	t.ended = true
	t.end(fmt.Errorf("%w: %w", elect.ErrLeadershipLost, reason))
	s.ended[t.shard] = max(s.ended[t.shard], t.t.Token)
	r.mu.Lock()
	delete(r.leading, t.shard)
	r.mu.Unlock()
	r.m.leading.Dec()
	r.o.log.Info("shard: stepped down", "prefix", r.pfx, "shard", t.shard, "identity", r.identity, "token", t.t.Token, "reason", reason)
	s.endings.Add(1)
	go func() {
		defer s.endings.Done()
		<-t.done
		var at int64
		switch rel {
		case releaseKey:
			at = s.resign(t)
		case releaseLease:
			<-s.released
		}
		if r.cb.OnStoppedLeading != nil {
			r.cb.OnStoppedLeading(t.shard, t.t, reason)
		}
		select {
		case s.finished <- finish{t: t, deletedAt: at}:
		case <-s.quit:
		}
	}()
}

// resign deletes t's key if it is still t's, bounded, and returns the
// revision that deleted it (0 if it did not).
func (s *incarnation) resign(t *term) int64 {
	s.resigns <- struct{}{}
	defer func() { <-s.resigns }()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), acquire.WriteTimeout)
	defer cancel()
	s.r.m.writes.Inc()
	resp, err := s.r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(t.t.Key), "=", t.t.Token)).
		Then(clientv3.OpDelete(t.t.Key)).
		Commit()
	switch {
	case err != nil:
		s.r.o.log.Warn("shard: hand-over failed; the key goes with the lease", "prefix", s.r.pfx, "shard", t.shard, "err", err)
		return 0
	case !resp.Succeeded:
		return 0
	}
	return resp.Header.Revision
}

// stop ends the incarnation: it ends every term for reason, waits for the
// callbacks and the writes in flight, revokes the lease (which deletes the
// membership key and every leader key of this process at once), and waits
// for every goroutine it started.
func (s *incarnation) stop(reason error) {
	for _, t := range s.terms {
		if !t.ended {
			s.end(t, reason, releaseLease)
		}
	}
	close(s.quit)
	for _, t := range s.terms {
		<-t.done
	}
	s.writes.Wait()
	s.revoke()
	close(s.released)
	s.endings.Wait()
	s.r.o.log.Info("shard: left", "prefix", s.r.pfx, "identity", s.r.identity, "lease", fmt.Sprintf("%x", s.lease), "reason", reason)
}

// revoke revokes the lease, bounded, whatever the state of Run's context.
func (s *incarnation) revoke() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), acquire.WriteTimeout)
	defer cancel()
	s.r.m.writes.Inc()
	if _, err := s.r.cli.Revoke(ctx, clientv3.LeaseID(s.lease)); err != nil {
		s.r.o.log.Warn("shard: revoke failed; the lease expires by itself", "prefix", s.r.pfx, "err", err)
	}
}
