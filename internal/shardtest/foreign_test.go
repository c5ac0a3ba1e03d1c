//go:build go1.24

package shardtest_test

import (
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/quietlocktest"
)

// Shards led by keys that are no member's are left alone, and cost
// nothing: a key of another form under a shard's election prefix, and an
// etcd Election candidate. When they go, the runner leads the shards.
func TestForeignLeadersLeftAlone(t *testing.T) {
	c := quietlocktest.New(t)
	if _, err := c.Client.Put(t.Context(), pfx+"/shards/s000/config", "someone"); err != nil {
		t.Fatal(err)
	}
	s := quietlocktest.NewSession(t, c.NewClient(), 60)
	etcdElection := concurrency.NewElection(s, pfx+"/shards/s001")
	if err := etcdElection.Campaign(t.Context(), "etcd-candidate"); err != nil {
		t.Fatal(err)
	}
	j := &journal{}
	a := start(t, c.NewClient(), j, "a", shardNames(3))
	quietlocktest.WaitFor(t, "a leads s002", func() bool { return len(a.r.Leading()) == 1 })
	settle(t, c)
	if got := a.r.Leaders(); got["s000"] != "someone" || got["s001"] != "etcd-candidate" || got["s002"] != "a" {
		t.Errorf("Leaders: %v", got)
	}
	before := c.Stats()
	time.Sleep(2 * time.Second)
	if st := c.Stats(); st.RaftIndex != before.RaftIndex {
		t.Errorf("with two shards led by others: +%d raft entries in 2 s, want 0", st.RaftIndex-before.RaftIndex)
	}

	if _, err := c.Client.Delete(t.Context(), pfx+"/shards/s000/config"); err != nil {
		t.Fatal(err)
	}
	if err := etcdElection.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	quietlocktest.WaitFor(t, "a leads all", func() bool { return len(a.r.Leading()) == 3 })
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	j.checkNoOverlap(t)
}

// A write that etcd refuses (no space) pauses the runner's writes on a
// backoff rather than repeating at once.
func TestRefusedWritesBackOff(t *testing.T) {
	c := quietlocktest.New(t)
	j := &journal{}
	a := start(t, c.NewClient(), j, "a", shardNames(2))
	quietlocktest.WaitFor(t, "a leads both", func() bool { return len(a.r.Leading()) == 2 })
	settle(t, c)

	ml, err := c.Client.MemberList(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	mc := pb.NewMaintenanceClient(c.Client.ActiveConnection())
	alarm := func(action pb.AlarmRequest_AlarmAction) {
		t.Helper()
		if _, err := mc.Alarm(t.Context(), &pb.AlarmRequest{Action: action, MemberID: ml.Members[0].ID, Alarm: pb.AlarmType_NOSPACE}); err != nil {
			t.Fatal(err)
		}
	}
	alarm(pb.AlarmRequest_ACTIVATE)
	// Deleting is allowed without space: the shard is free, and every
	// claim is refused.
	if _, err := c.Client.Delete(t.Context(), pfx+"/shards/s000/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	before := c.Stats()
	time.Sleep(2 * time.Second)
	after := c.Stats()
	// The backoff starts at 50 ms and doubles (with jitter) to 2 s: a
	// handful of claims in 2 s, where sending at once made ~2000.
	if n := after.RaftIndex - before.RaftIndex; n > 12 {
		t.Errorf("%d raft entries in 2 s of refused claims, want a handful", n)
	}
	alarm(pb.AlarmRequest_DEACTIVATE)
	quietlocktest.WaitFor(t, "a leads both again", func() bool { return len(a.r.Leading()) == 2 })
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	j.checkNoOverlap(t)
}
