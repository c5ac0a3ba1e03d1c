package shard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/internal/acquire"
	"github.com/quietlock/quietlock/internal/leaseclock"
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
	busy     map[string]bool  // shards with a claim or cleanup in flight ("": the membership key)
	inflight int

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
	shard string // "" for the membership key
	claim bool
	ok    bool  // the claim won, or the key was deleted
	rev   int64 // of the response
	err   error
}

// finish reports a term that has ended and whose callbacks have returned.
type finish struct {
	t         *term
	deletedAt int64 // revision of the resignation that deleted its key, or 0
}

func (s *incarnation) key(shard string) string {
	return s.r.pfx + shardsDir + shard + "/" + leaseKey("", s.lease)
}

// loop runs the incarnation until ctx ends or the lease is lost or may be.
func (s *incarnation) loop(updates <-chan update, renewals <-chan leaseclock.Renewal) error {
	expire := time.NewTimer(time.Until(s.deadline))
	defer expire.Stop()
	for {
		select {
		case <-s.ctx.Done():
			s.stop(elect.ErrResigned)
			return nil
		case <-expire.C:
			s.stop(elect.ErrLeaseDeadline)
			return fmt.Errorf("shard: lease %x: %w", s.lease, elect.ErrLeaseDeadline)
		case rn := <-renewals:
			switch {
			case errors.Is(rn.Err, leaseclock.ErrLeaseGone):
				s.stop(concurrency.ErrSessionExpired)
				return fmt.Errorf("shard: lease %x: %w", s.lease, concurrency.ErrSessionExpired)
			case rn.Err != nil:
				s.r.o.log.Debug("shard: lease renewal failed", "prefix", s.r.pfx, "err", rn.Err, "deadline", s.deadline)
			case rn.Deadline.After(s.deadline):
				s.deadline = rn.Deadline
				expire.Reset(time.Until(s.deadline))
			}
			continue
		case u := <-updates:
			s.mir.apply(u)
		case res := <-s.results:
			s.done(res)
		case f := <-s.finished:
			if s.terms[f.t.shard] == f.t {
				delete(s.terms, f.t.shard)
			}
			if f.deletedAt > s.mir.rev {
				s.forget(f.t.shard, f.t.t.Token)
			}
		case <-s.r.kick:
		}
		s.reconcile()
	}
}

// forget removes our key of shard, created at createRev, from the mirror,
// ahead of the watch.
func (s *incarnation) forget(shard string, createRev int64) {
	if e, ok := s.mir.shards[shard][s.lease]; ok && e.createRev == createRev {
		s.mir.del(s.key(shard))
	}
}

// done records the outcome of a claim or cleanup.
func (s *incarnation) done(res result) {
	s.inflight--
	delete(s.busy, res.shard)
	switch {
	case res.shard == "" && res.err == nil:
		s.joinRev = res.rev
	case res.err != nil:
		// The outcome is unknown: the watch will show the key if it exists,
		// and reconcile then takes it or deletes it.
		s.r.o.log.Warn("shard: write failed", "prefix", s.r.pfx, "shard", res.shard, "err", res.err)
	case !res.ok:
		s.r.o.log.Debug("shard: write found the key changed", "prefix", s.r.pfx, "shard", res.shard, "claim", res.claim, "revision", res.rev)
	case res.claim && res.rev > s.mir.rev:
		// Ahead of the watch; its event for this key will say the same.
		s.mir.put(s.key(res.shard), res.rev, s.r.identity)
	case res.shard != "" && !res.claim && res.rev > s.mir.rev:
		delete(s.mir.shards[res.shard], s.lease)
		if len(s.mir.shards[res.shard]) == 0 {
			delete(s.mir.shards, res.shard)
		}
	}
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
	if !joined && s.mir.rev >= s.joinRev && !s.busy[""] {
		// Someone deleted our membership key: without it the others count
		// our shards as no member's. Write it again.
		s.rejoin()
	}
	owners := make(map[string]int64, len(shards))
	for _, sh := range shards {
		if l, _, ok := s.mir.leader(sh); ok {
			owners[sh] = l
		}
	}
	var p map[string]int64
	if joined {
		p = plan(shards, members, owners)
	}

	for sh, t := range s.terms {
		if t.ended {
			continue
		}
		e, ok := s.mir.shards[sh][s.lease]
		switch {
		case (!ok || e.createRev != t.t.Token) && s.mir.rev >= t.t.Token:
			s.end(t, elect.ErrKeyDeleted, releaseNone)
		case !wanted[sh]:
			s.end(t, ErrRemoved, releaseKey)
		case joined && p[sh] != s.lease:
			s.end(t, ErrRebalanced, releaseKey)
		}
	}

	// Keys of ours that no term holds: a claim whose answer was lost, or
	// whose shard was given to another meanwhile.
	for sh, keys := range s.mir.shards {
		e, ok := keys[s.lease]
		if !ok || s.terms[sh] != nil || s.busy[sh] {
			continue
		}
		if l, _, _ := s.mir.leader(sh); l == s.lease && wanted[sh] && joined && p[sh] == s.lease {
			s.start(sh, e.createRev)
			continue
		}
		if s.inflight < r.o.inflight {
			s.cleanup(sh, e.createRev)
		}
	}

	if joined && time.Now().Before(s.deadline) {
		for _, sh := range shards {
			if s.inflight >= r.o.inflight {
				break
			}
			if _, led := owners[sh]; led || p[sh] != s.lease || s.terms[sh] != nil || s.busy[sh] {
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

// claim creates our key of shard if the shard has no key at all.
func (s *incarnation) claim(sh string) {
	s.busy[sh] = true
	s.inflight++
	key, pfx := s.key(sh), s.r.pfx+shardsDir+sh+"/"
	s.write(sh, true, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return s.r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(pfx), "=", 0).WithPrefix()).
			Then(clientv3.OpPut(key, s.r.identity, clientv3.WithLease(clientv3.LeaseID(s.lease)))).
			Commit()
	})
}

// rejoin writes the membership key again.
func (s *incarnation) rejoin() {
	s.busy[""] = true
	s.inflight++
	key := s.r.pfx + leaseKey(membersDir, s.lease)
	s.write("", false, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return s.r.cli.Txn(ctx).Then(clientv3.OpPut(key, s.r.identity, clientv3.WithLease(clientv3.LeaseID(s.lease)))).Commit()
	})
}

// cleanup deletes our key of shard, if it still has createRev.
func (s *incarnation) cleanup(sh string, createRev int64) {
	s.busy[sh] = true
	s.inflight++
	key := s.key(sh)
	s.write(sh, false, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return s.r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", createRev)).
			Then(clientv3.OpDelete(key)).
			Commit()
	})
}

// write runs txn to completion, bounded, and reports its outcome to loop.
func (s *incarnation) write(sh string, claim bool, txn func(context.Context) (*clientv3.TxnResponse, error)) {
	s.writes.Add(1)
	go func() {
		defer s.writes.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), acquire.WriteTimeout)
		defer cancel()
		s.r.m.writes.Inc()
		resp, err := txn(ctx)
		res := result{shard: sh, claim: claim, err: err}
		if err == nil {
			res.ok, res.rev = resp.Succeeded, resp.Header.Revision
		}
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
