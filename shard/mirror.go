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
}

// mirror is this process's copy of every key under the prefix, kept by one
// watch: all it needs to know about the members and the leaders of every
// shard, without a request per shard.
type mirror struct {
	pfx     string
	rev     int64                      // revision the mirror is at
	members map[int64]entry            // by lease
	shards  map[string]map[int64]entry // shard -> lease -> key
}

func newMirror(pfx string) *mirror {
	return &mirror{pfx: pfx, members: map[int64]entry{}, shards: map[string]map[int64]entry{}}
}

// parse splits a key under the prefix into its directory, its shard (for a
// leader key) and its lease. ok is false for keys of any other form.
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
		i := strings.LastIndexByte(rest, '/')
		if i <= 0 {
			return "", "", 0, false
		}
		dir, shard, hex = shardsDir, rest[:i], rest[i+1:]
	default:
		return "", "", 0, false
	}
	lease, err := strconv.ParseInt(hex, 16, 64)
	if err != nil || lease == 0 {
		return "", "", 0, false
	}
	return dir, shard, lease, true
}

// put records key, created at createRev with value.
func (m *mirror) put(key string, createRev int64, value string) {
	dir, shard, lease, ok := m.parse(key)
	switch {
	case !ok:
	case dir == membersDir:
		m.members[lease] = entry{createRev, value}
	default:
		keys := m.shards[shard]
		if keys == nil {
			keys = map[int64]entry{}
			m.shards[shard] = keys
		}
		keys[lease] = entry{createRev, value}
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
		delete(m.shards[shard], lease)
		if len(m.shards[shard]) == 0 {
			delete(m.shards, shard)
		}
	}
}

// apply brings the mirror to what u reports.
func (m *mirror) apply(u update) {
	if u.reset {
		m.members, m.shards = map[int64]entry{}, map[string]map[int64]entry{}
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
func (m *mirror) leader(shard string) (lease int64, e entry, ok bool) {
	for l, k := range m.shards[shard] {
		if !ok || k.createRev < e.createRev {
			lease, e, ok = l, k, true
		}
	}
	return lease, e, ok
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
