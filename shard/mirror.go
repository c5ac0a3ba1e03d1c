package shard

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/quietlock/quietlock/internal/retry"
	"github.com/quietlock/quietlock/internal/watchwait"
)

// Keys under a runner's prefix pfx ("/" included):
//
//	pfx + "members/" + lease ID in hex       one per process, on its lease; value: identity
//	pfx + "shards/" + shard + "/" + lease ID  a leader key of shard, as etcd's election writes it
//
// Each shard is an election on pfx + "shards/" + shard, with etcd's key
// layout, so etcd's concurrency.Election, `etcdctl elect` and
// elect.Election can observe it.
const (
	membersDir = "members/"
	shardsDir  = "shards/"
)

// leaseKey is the key of the process with lease under dir.
func leaseKey(dir string, lease int64) string { return dir + strconv.FormatInt(lease, 16) }

// entry is one key of the mirror.
type entry struct {
	createRev int64
	value     string
	lease     int64 // of a key named after its lease (ours and etcd's); 0 for any other key
}

// mirror is this process's copy of every key under the prefix, kept by one
// watch: all it needs to know about the members and the leaders of every
// shard, without a request per shard.
type mirror struct {
	pfx     string
	rev     int64                       // revision the mirror is at
	members map[int64]entry             // by lease
	shards  map[string]map[string]entry // shard -> key -> entry: every key under the shard's election prefix

	// deleted holds keys of this process known to be deleted, with their
	// create revision: a watch event or a read older than the deletion
	// (the deletion was applied here ahead of the watch) does not bring
	// them back.
	deleted map[string]int64
}

func newMirror(pfx string) *mirror {
	return &mirror{pfx: pfx, members: map[int64]entry{}, shards: map[string]map[string]entry{}, deleted: map[string]int64{}}
}

// parse splits a key under the prefix into its directory and, for a key
// under a shard's election prefix, the shard. lease is the lease the key is
// named after, or 0. ok is false for keys of any other form. Every key
// under pfx/shards/<shard>/ belongs to the shard, whatever its form: a claim
// on the shard compares with all of them.
func (m *mirror) parse(key string) (dir, shard string, lease int64, ok bool) {
	rest, found := strings.CutPrefix(key, m.pfx)
	if !found {
		return "", "", 0, false
	}
	var hex string
	switch {
	case strings.HasPrefix(rest, membersDir):
		dir, hex = membersDir, rest[len(membersDir):]
	case strings.HasPrefix(rest, shardsDir):
		rest = rest[len(shardsDir):]
		i := strings.IndexByte(rest, '/')
		if i <= 0 {
			return "", "", 0, false
		}
		dir, shard, hex = shardsDir, rest[:i], rest[i+1:]
	default:
		return "", "", 0, false
	}
	lease, err := strconv.ParseInt(hex, 16, 64)
	if err != nil || lease <= 0 || strconv.FormatInt(lease, 16) != hex {
		lease = 0
	}
	if dir == membersDir && lease == 0 {
		return "", "", 0, false
	}
	return dir, shard, lease, true
}

// put records key, created at createRev with value.
func (m *mirror) put(key string, createRev int64, value string) {
	if rev, ok := m.deleted[key]; ok && createRev <= rev {
		return
	}
	dir, shard, lease, ok := m.parse(key)
	switch {
	case !ok:
	case dir == membersDir:
		m.members[lease] = entry{createRev, value, lease}
	default:
		keys := m.shards[shard]
		if keys == nil {
			keys = map[string]entry{}
			m.shards[shard] = keys
		}
		keys[key] = entry{createRev, value, lease}
	}
}

// del forgets key.
func (m *mirror) del(key string) {
	dir, shard, lease, ok := m.parse(key)
	switch {
	case !ok:
	case dir == membersDir:
		delete(m.members, lease)
	default:
		delete(m.shards[shard], key)
		if len(m.shards[shard]) == 0 {
			delete(m.shards, shard)
		}
	}
}

// forget removes key, created at createRev, ahead of the watch: it was
// deleted by a write of this process.
func (m *mirror) forget(key string, createRev int64) {
	if createRev > m.deleted[key] {
		m.deleted[key] = createRev
	}
	if _, shard, _, ok := m.parse(key); ok {
		if e, ok := m.shards[shard][key]; ok && e.createRev <= createRev {
			m.del(key)
		}
	}
}

// apply brings the mirror to what u reports.
func (m *mirror) apply(u update) {
	if u.reset {
		m.members, m.shards = map[int64]entry{}, map[string]map[string]entry{}
		for _, kv := range u.kvs {
			m.put(string(kv.Key), kv.CreateRevision, string(kv.Value))
		}
		m.rev = u.rev
		return
	}
	for _, ev := range u.events {
		if ev.Type == mvccpb.DELETE {
			m.del(string(ev.Kv.Key))
		} else {
			m.put(string(ev.Kv.Key), ev.Kv.CreateRevision, string(ev.Kv.Value))
		}
		m.rev = ev.Kv.ModRevision
	}
}

// leader returns the leader key of shard (the one created first), if any.
func (m *mirror) leader(shard string) (key string, e entry, ok bool) {
	for k, en := range m.shards[shard] {
		if !ok || en.createRev < e.createRev {
			key, e, ok = k, en, true
		}
	}
	return key, e, ok
}

// update is what the watch reports: a full read (reset, with kvs) or the
// events of one watch response.
type update struct {
	reset  bool
	kvs    []*mvccpb.KeyValue
	events []*clientv3.Event
	rev    int64
}

// errWatchClosed ends a watch whose channel closed without an error.
var errWatchClosed = errors.New("shard: watch closed")

// follow reads every key under pfx and then watches them, sending what it
// learns to out, until ctx ends. After any failure of the watch (compaction,
// no leader, a lost connection) it reads everything again, after a backoff,
// and watches on from the read. restart, if not nil, counts those restarts.
func follow(ctx context.Context, cli *clientv3.Client, pfx string, out chan<- update, restart func()) {
	bo := retry.NewBackOff()
	send := func(u update) bool {
		select {
		case out <- u:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for first := true; ; first = false {
		if !first {
			if restart != nil {
				restart()
			}
			if retry.Sleep(ctx, bo.NextBackOff()) != nil {
				return
			}
		}
		resp, err := cli.Get(ctx, pfx, clientv3.WithPrefix())
		if err != nil {
			if ctx.Err() != nil || cli.Ctx().Err() != nil {
				return
			}
			continue
		}
		if !send(update{reset: true, kvs: resp.Kvs, rev: resp.Header.Revision}) {
			return
		}
		err = func() error {
			wch, stop := watchwait.Open(ctx, cli, pfx, watchwait.SubmitGrace, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
			defer stop()
			for wr := range wch {
				if err := wr.Err(); err != nil {
					return err
				}
				if len(wr.Events) == 0 {
					continue
				}
				bo.Reset()
				if !send(update{events: wr.Events}) {
					return ctx.Err()
				}
			}
			return errWatchClosed
		}()
		if ctx.Err() != nil || cli.Ctx().Err() != nil {
			return
		}
	}
}
