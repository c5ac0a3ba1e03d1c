package elect

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Term is one tenure of leadership won by [Run]. Its fields do not change.
// A Term is safe for concurrent use.
type Term struct {
	// Identity is the value this leader proclaimed.
	Identity string
	// Key is the leader key.
	Key string
	// Token is the fencing token: the create revision of Key. Every later
	// term, of any candidate, has a larger token.
	Token int64

	cli *clientv3.Client
}

// NewTerm returns the Term of a leader key created at revision token, for
// fencing the writes of a leader that was not elected by [Run]: an
// [Election] that won (its Key and Rev), or a shard led through package
// shard. It makes no request.
func NewTerm(cli *clientv3.Client, identity, key string, token int64) *Term {
	return &Term{Identity: identity, Key: key, Token: token, cli: cli}
}

// Guard returns a comparison that holds only while this term lasts in etcd:
// the leader key exists with this term's create revision.
func (t *Term) Guard() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(t.Key), "=", t.Token)
}

// Txn starts a transaction guarded by [Term.Guard] and the comparisons in
// cmps; add the operations with Then and Else and call Commit. etcd applies
// the Then branch only if this term still lasts, so a leader that lost its
// term (in a partition, say) cannot write.
func (t *Term) Txn(ctx context.Context, cmps ...clientv3.Cmp) clientv3.Txn {
	return t.cli.Txn(ctx).If(append([]clientv3.Cmp{t.Guard()}, cmps...)...)
}
