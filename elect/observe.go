package elect

import (
	"bytes"
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/quietlock/quietlock/internal/retry"
	"github.com/quietlock/quietlock/internal/watchwait"
)

// Observe returns a channel that reports the leader: a response for the
// leader at the time of the call (once there is one), then, after each
// change of leader or of the leader's value, a response for the leader as
// it is then. Each response holds the leader's key-value as Kvs[0] and a
// header whose Revision is the revision it describes, as etcd's Observe
// does.
//
// What is guaranteed is the latest state after every change, not every
// term: when the leader's key is deleted, Observe reads who leads next, and
// a leader elected and gone between two such reads is not reported (leaders
// A, B, C in quick succession can be reported as A, then C). etcd's Observe
// does the same. Use the fencing token of each response (the leader key's
// create revision) to tell terms apart; never infer from Observe that a
// term did not exist.
//
// The channel is buffered (capacity 1) and coalesces: if the receiver is
// slower than the changes, undelivered responses are replaced by newer ones,
// so the receiver always gets the latest state, never a stale one after a
// newer one. Times without a leader are not reported (the [Run] callback
// OnNewLeader reports them).
//
// Observe survives compaction, etcd leader changes, lost connections and
// member restarts: after any of them it reads the leader again and trusts
// the read over watch events. The channel is closed, by Observe's goroutine,
// only when ctx ends (the reason is ctx.Err()) or the session's client is
// closed; the goroutine then exits. On an invalid Election the channel is
// closed at once.
func (e *Election) Observe(ctx context.Context) <-chan *clientv3.GetResponse {
	ch := make(chan *clientv3.GetResponse, 1)
	if e.err != nil {
		close(ch)
		return ch
	}
	go func() {
		defer close(ch)
		follow(ctx, e.s.Client(), e.pfx, func(r *clientv3.GetResponse) {
			if len(r.Kvs) == 0 {
				return
			}
			// The only sender: after draining, the send cannot block.
			select {
			case ch <- r:
			default:
				select {
				case <-ch:
				default:
				}
				ch <- r
			}
		}, nil)
	}()
	return ch
}

// follow reports the leader of pfx to emit until ctx ends or the client is
// closed: the latest state after every change of leader or value (short
// terms between two reads can be missed), and no leader as a response with
// no Kvs. It never reports the same state twice in a row. restart, if not
// nil, is called each time a watch had to be re-established.
func follow(ctx context.Context, cli *clientv3.Client, pfx string, emit func(*clientv3.GetResponse), restart func()) {
	var (
		last  *mvccpb.KeyValue // last reported leader; nil before the first report
		none  bool             // last report was "no leader"
		bo    = retry.NewBackOff()
		fresh = true
	)
	report := func(hdr *pb.ResponseHeader, kv *mvccpb.KeyValue) {
		switch {
		case kv == nil && none:
			return
		case kv != nil && last != nil && !none && bytes.Equal(kv.Key, last.Key) &&
			kv.CreateRevision == last.CreateRevision && kv.ModRevision == last.ModRevision:
			return
		}
		last, none = kv, kv == nil
		r := &clientv3.GetResponse{Header: hdr}
		if kv != nil {
			r.Kvs = []*mvccpb.KeyValue{kv}
		}
		emit(r)
	}
	for {
		if !fresh {
			if restart != nil {
				restart()
			}
			if retry.Sleep(ctx, bo.NextBackOff()) != nil {
				return
			}
		}
		fresh = false
		resp, err := cli.Get(ctx, pfx, clientv3.WithFirstCreate()...)
		if err != nil {
			if ctx.Err() != nil || cli.Ctx().Err() != nil {
				return
			}
			continue
		}
		var kv *mvccpb.KeyValue
		if len(resp.Kvs) > 0 {
			kv = resp.Kvs[0]
		}
		report(resp.Header, kv)

		// Watch from just after the read: the leader's key while there is
		// one, else the prefix for the first key to appear.
		err = watchLeader(ctx, cli, resp.Header.Revision+1, pfx, kv, report)
		switch {
		case ctx.Err() != nil || cli.Ctx().Err() != nil:
			return
		case errors.Is(err, errReread):
			// The leader changed in a way only a read settles: read at once.
			fresh = true
			bo.Reset()
		}
	}
}

// errReread ends a watch whose events call for a fresh read.
var errReread = errors.New("elect: read again")

// watchLeader watches, from rev, the leader's key (or, when leader is nil,
// the prefix) and reports changes of the leader's value. It returns
// errReread when the leader's key was deleted or replaced, or when a key
// appeared while there was no leader; otherwise the error that ended the
// watch.
func watchLeader(ctx context.Context, cli *clientv3.Client, rev int64, pfx string, leader *mvccpb.KeyValue, report func(*pb.ResponseHeader, *mvccpb.KeyValue)) error {
	key, opts := pfx, []clientv3.OpOption{clientv3.WithRev(rev), clientv3.WithPrefix()}
	if leader != nil {
		key, opts = string(leader.Key), opts[:1]
	}
	wch, stop := watchwait.Open(ctx, cli, key, watchwait.SubmitGrace, opts...)
	defer stop()
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if leader == nil || ev.Type == mvccpb.DELETE || ev.Kv.CreateRevision != leader.CreateRevision {
				return errReread
			}
			h := wr.Header
			report(&pb.ResponseHeader{ClusterId: h.ClusterId, MemberId: h.MemberId, Revision: ev.Kv.ModRevision, RaftTerm: h.RaftTerm}, ev.Kv)
		}
	}
	return errors.New("elect: watch closed")
}
