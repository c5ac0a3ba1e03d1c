package elect

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// errLeaseGone is a probe's error when etcd says the lease does not exist.
var errLeaseGone = errors.New("elect: lease not found")

// leaseClock learns, from renewals it sends itself, a moment before which
// etcd cannot expire the lease.
//
// etcd expires a lease TTL after the leader processed its last renewal.
// A renewal is processed after it is sent, so the send time of any answered
// renewal plus the granted TTL is a lower bound on the expiry, measured on
// this process's own clock. etcd's client instead counts from when an answer
// was received, which can be later than the server's count, and checks once
// a second: its Session.Done can fire after a successor was elected.
type leaseClock struct {
	cli    *clientv3.Client
	id     clientv3.LeaseID
	margin time.Duration
}

type probeResult struct {
	deadline time.Time // send time + granted TTL - margin
	err      error
}

// probe renews the lease once, waiting for an answer until until at the
// latest (a later answer could only move the deadline past a moment that is
// already over).
func (lc leaseClock) probe(ctx context.Context, until time.Time) probeResult {
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	sent := time.Now()
	resp, err := lc.cli.KeepAliveOnce(ctx, lc.id)
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return probeResult{err: errLeaseGone}
	case err != nil:
		return probeResult{err: err}
	}
	return probeResult{deadline: sent.Add(time.Duration(resp.TTL)*time.Second - lc.margin)}
}
