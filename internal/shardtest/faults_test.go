//go:build go1.24

package shardtest_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/quietlocktest"
	"github.com/quietlock/quietlock/shard"
)

// A claim that etcd applied but whose answer was lost: the runner learns of
// its key from its watch and leads with it, writing nothing more.
func TestClaimAnswerLost(t *testing.T) {
	c := quietlocktest.New(t)
	var lost atomic.Int32
	cli := quietlocktest.NewInterceptedClient(t, c.Endpoint, func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if tr, ok := req.(*pb.TxnRequest); ok && err == nil && len(tr.Success) == 1 && tr.Success[0].GetRequestPut() != nil &&
			strings.Contains(string(tr.Success[0].GetRequestPut().Key), "/shards/s001/") && lost.CompareAndSwap(0, 1) {
			return status.Error(codes.Unavailable, "test: answer lost")
		}
		return err
	})
	j := &journal{}
	before := c.Stats()
	p := start(t, cli, j, "a", shardNames(3))
	quietlocktest.WaitFor(t, "a leads all", func() bool { return balanced(t, c, 3, p) })
	settle(t, c)
	if lost.Load() != 1 {
		t.Fatal("no claim answer was lost")
	}
	// The membership key and three claims: the lost one was read back, not
	// repeated; and the lease grant, a raft entry only.
	if st := c.Stats(); st.Revision-before.Revision != 4 || st.RaftIndex-before.RaftIndex != 5 {
		t.Errorf("%d revisions, %d raft entries; want 4 and 5", st.Revision-before.Revision, st.RaftIndex-before.RaftIndex)
	}
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}
	if terms := j.checkNoOverlap(t); terms != 3 {
		t.Errorf("%d terms, want 3", terms)
	}
}

// Keys deleted or leases revoked behind the runner's back end the terms
// they held, and the runner recovers: a deleted leader key is claimed
// again, a deleted membership key written again, a revoked lease replaced.
func TestOperatorInterference(t *testing.T) {
	c := quietlocktest.New(t)
	j := &journal{}
	reg := prometheus.NewPedanticRegistry()
	shards := shardNames(4)
	a := start(t, c.NewClient(), j, "a", shards, shard.WithRegisterer(reg))
	b := start(t, c.NewClient(), j, "b", shards)
	// The gauges follow a's own view, which learns of b's membership
	// through its watch, possibly a moment after the shares balance.
	quietlocktest.WaitFor(t, "balanced, and a's gauges say so", func() bool {
		return balanced(t, c, 4, a, b) &&
			testutil.ToFloat64(gauge(t, reg, "quietlock_shard_leading")) == 2 &&
			testutil.ToFloat64(gauge(t, reg, "quietlock_shard_members")) == 2
	})

	// A leader key deleted: the term ends, and the same process (the plan
	// has not changed) claims the shard again with a larger token.
	sh := a.r.Leading()[0]
	before := endsOf(j, "a", sh)
	mark := j.len()
	if _, err := c.Client.Delete(t.Context(), pfx+"/shards/"+sh+"/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	quietlocktest.WaitFor(t, "a leads the shard again", func() bool {
		return endsOf(j, "a", sh) == before+1 && balanced(t, c, 4, a, b)
	})
	for _, r := range j.since(mark) {
		if r.kind == "end" && r.shard == sh && !errors.Is(r.reason, elect.ErrKeyDeleted) {
			t.Errorf("term of %s ended: %v, want ErrKeyDeleted", sh, r.reason)
		}
	}

	// A membership key deleted: written again, and nothing moves.
	led := a.r.Leading()
	if _, err := c.Client.Delete(t.Context(), pfx+"/members/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	quietlocktest.WaitFor(t, "both members back", func() bool { return len(c.Keys(pfx+"/members/")) == 2 })
	if got := a.r.Leading(); len(got) != len(led) || got[0] != led[0] {
		t.Errorf("a led %v, now %v", led, got)
	}

	// A lease revoked: all of b's keys go at once, b's terms end (the watch
	// shows the keys deleted, or a renewal finds the lease gone, whichever
	// comes first), and b joins again with a new lease.
	resp, err := c.Client.Get(t.Context(), pfx+"/members/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var revoked clientv3.LeaseID
	for _, kv := range resp.Kvs {
		if string(kv.Value) == "b" {
			revoked = clientv3.LeaseID(kv.Lease)
		}
	}
	bLed := len(b.r.Leading())
	mark = j.len()
	settle(t, c)
	before2 := c.Stats()
	if _, err := c.Client.Revoke(t.Context(), revoked); err != nil {
		t.Fatal(err)
	}
	quietlocktest.WaitFor(t, "balanced again, b with a new lease", func() bool {
		resp, err := c.Client.Get(t.Context(), pfx+"/members/", clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 2 {
			return false
		}
		for _, kv := range resp.Kvs {
			if clientv3.LeaseID(kv.Lease) == revoked {
				return false
			}
		}
		return balanced(t, c, 4, a, b)
	})
	// The revoke, b's new lease and membership key, and a few claims: no
	// write repeated while the lease was gone.
	settle(t, c)
	if n := c.Stats().RaftIndex - before2.RaftIndex; n > 12 {
		t.Errorf("revoke to rejoin: %d raft entries, want at most 12", n)
	}
	ended := 0
	for _, r := range j.since(mark) {
		if r.kind == "stopped" && r.id == "b" {
			if !errors.Is(r.reason, concurrency.ErrSessionExpired) && !errors.Is(r.reason, elect.ErrKeyDeleted) {
				t.Errorf("b's term of %s ended: %v", r.shard, r.reason)
			}
			ended++
		}
	}
	if ended != bLed {
		t.Errorf("%d of b's terms ended, it led %d", ended, bLed)
	}
	a.stop(t)
	b.stop(t)
	j.checkNoOverlap(t)
	if got := testutil.ToFloat64(gauge(t, reg, "quietlock_shard_leading")); got != 0 {
		t.Errorf("quietlock_shard_leading = %v after Run, want 0", got)
	}
	if keys := c.Keys(pfx + "/"); len(keys) != 0 {
		t.Errorf("keys left: %v", keys)
	}
}

func endsOf(j *journal, id, sh string) int {
	n := 0
	for _, r := range j.records() {
		if r.kind == "end" && r.id == id && r.shard == sh {
			n++
		}
	}
	return n
}

// gauge finds the collector of the named metric in reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, m := range mf.GetMetric() {
					ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "", nil, nil), prometheus.GaugeValue, m.GetGauge().GetValue())
				}
			}
		}
	})
}

type collectorFunc func(chan<- prometheus.Metric)

func (f collectorFunc) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(f, ch) }
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }
