package shard

import (
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func putEvent(key string, createRev, modRev int64) *clientv3.Event {
	return &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), CreateRevision: createRev, ModRevision: modRev, Value: []byte("v")}}
}

func delEvent(key string, modRev int64) *clientv3.Event {
	return &clientv3.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: modRev}}
}

func TestMirrorParse(t *testing.T) {
	m := newMirror("/p/")
	for _, tc := range []struct {
		key   string
		dir   string
		shard string
		lease int64
		ok    bool
	}{
		{"/p/members/1f", membersDir, "", 0x1f, true},
		{"/p/members/config", "", "", 0, false},
		{"/p/members/01f", "", "", 0, false}, // not how a lease ID is written
		{"/p/shards/x/1f", shardsDir, "x", 0x1f, true},
		{"/p/shards/x/config", shardsDir, "x", 0, true}, // a key of the shard's, no member's
		{"/p/shards/x//1f", shardsDir, "x", 0, true},    // an election on ".../x/": still x's
		{"/p/shards/x", "", "", 0, false},
		{"/p/other/1f", "", "", 0, false},
		{"/q/shards/x/1f", "", "", 0, false},
	} {
		dir, shard, lease, ok := m.parse(tc.key)
		if dir != tc.dir || shard != tc.shard || lease != tc.lease || ok != tc.ok {
			t.Errorf("parse(%q) = %q, %q, %x, %v; want %q, %q, %x, %v", tc.key, dir, shard, lease, ok, tc.dir, tc.shard, tc.lease, tc.ok)
		}
	}
}

// The leader of a shard is its key created first, whatever its form.
func TestMirrorLeader(t *testing.T) {
	m := newMirror("/p/")
	m.apply(update{events: []*clientv3.Event{putEvent("/p/shards/x/1f", 7, 7), putEvent("/p/shards/x/config", 5, 5)}})
	if key, e, ok := m.leader("x"); !ok || key != "/p/shards/x/config" || e.lease != 0 {
		t.Errorf("leader: %q %+v %v, want the foreign key", key, e, ok)
	}
	m.apply(update{events: []*clientv3.Event{delEvent("/p/shards/x/config", 8)}})
	if key, e, ok := m.leader("x"); !ok || key != "/p/shards/x/1f" || e.lease != 0x1f {
		t.Errorf("leader: %q %+v %v, want 1f's key", key, e, ok)
	}
}

// A key this process deleted, removed from the mirror ahead of the watch,
// does not come back with a watch event or a read older than the deletion;
// a newer incarnation of the key does.
func TestMirrorForget(t *testing.T) {
	m := newMirror("/p/")
	const key = "/p/shards/x/1f"
	m.put(key, 10, "a") // a claim won at 10, ahead of the watch
	m.forget(key, 10)   // resigned at 12, ahead of the watch
	if _, _, ok := m.leader("x"); ok {
		t.Fatal("forgotten key still in the mirror")
	}
	m.apply(update{events: []*clientv3.Event{putEvent(key, 10, 10)}}) // the watch, late
	if _, _, ok := m.leader("x"); ok {
		t.Error("a stale watch event brought the key back")
	}
	m.apply(update{reset: true, rev: 11, kvs: []*mvccpb.KeyValue{{Key: []byte(key), CreateRevision: 10, ModRevision: 10}}})
	if _, _, ok := m.leader("x"); ok {
		t.Error("a stale read brought the key back")
	}
	m.apply(update{events: []*clientv3.Event{delEvent(key, 12), putEvent(key, 15, 15)}})
	if _, e, ok := m.leader("x"); !ok || e.createRev != 15 {
		t.Errorf("a newer key: %+v %v, want created at 15", e, ok)
	}
}
