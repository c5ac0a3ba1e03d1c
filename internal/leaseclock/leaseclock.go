// Package leaseclock renews an etcd lease on a schedule of its own and
// learns, from each answered renewal, a moment before which etcd cannot
// expire the lease: the clock by which a leader steps down early.
package leaseclock

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/quietlock/quietlock/internal/retry"
)

// ErrLeaseGone is a renewal's error when etcd says the lease does not exist.
var ErrLeaseGone = errors.New("leaseclock: lease not found")

// Clock learns, from renewals it sends itself, a moment before which
// etcd cannot expire the lease.
//
// etcd expires a lease TTL after its leader processed the last renewal. A
// renewal is processed after it is sent, so the send time of any answered
// renewal plus the granted TTL is a lower bound on the expiry, measured on
// this process's own clock. etcd's client instead counts from when an answer
// was received, which can be later than the server's count, and checks once
// a second: its Session.Done can fire after a successor was elected.
//
// The renewals go on one keepalive stream of the clock's own, one at a time,
// so each answer belongs to the last renewal sent; a stream per renewal
// would cost a re-authentication per renewal when the client uses a
// password. Renewals through etcd's gRPC proxy are not supported: the proxy
// answers from a renewal of its own, which may be older.
type Clock struct {
	Client *clientv3.Client
	Lease  clientv3.LeaseID
	// Margin is subtracted from every deadline.
	Margin time.Duration
	// Answered, if not nil, is called as each answer to a renewal arrives.
	Answered func()
}

// Renewal is what one answered (or failed) renewal proves.
type Renewal struct {
	Deadline time.Time // send time + granted TTL - margin
	Err      error
}

// Run renews the lease at once and then every interval, sending what each
// renewal proves to out, until ctx ends. A failed renewal is retried sooner,
// with a backoff. run never blocks its reader: out must have room for one
// value, and the reader must keep reading until run returns.
func (lc Clock) Run(ctx context.Context, interval time.Duration, out chan<- Renewal) {
	ctx = clientv3.WithRequireLeader(ctx)
	leases := pb.NewLeaseClient(lc.Client.ActiveConnection())
	bo := retry.NewBackOff()
	var stream pb.Lease_LeaseKeepAliveClient
	for {
		var r Renewal
		if stream == nil {
			var err error
			if stream, err = leases.LeaseKeepAlive(ctx); err != nil {
				r.Err = fmt.Errorf("leaseclock: open keepalive stream: %w", err)
			}
		}
		if stream != nil {
			r = lc.renew(stream)
			if r.Err != nil && !errors.Is(r.Err, ErrLeaseGone) {
				stream = nil // broken: open a new one next time
			}
		}
		select {
		case out <- r:
		case <-ctx.Done():
			return
		}
		wait := interval
		if r.Err != nil {
			wait = min(bo.NextBackOff(), interval)
		} else {
			bo.Reset()
		}
		if retry.Sleep(ctx, wait) != nil {
			return
		}
	}
}

// renew sends one renewal on stream and waits for its answer.
func (lc Clock) renew(stream pb.Lease_LeaseKeepAliveClient) Renewal {
	sent := time.Now()
	if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(lc.Lease)}); err != nil {
		return Renewal{Err: fmt.Errorf("leaseclock: renew lease: %w", err)}
	}
	resp, err := stream.Recv()
	switch {
	case err != nil:
		return Renewal{Err: fmt.Errorf("leaseclock: renew lease: %w", err)}
	case resp.TTL <= 0:
		return Renewal{Err: ErrLeaseGone}
	}
	if lc.Answered != nil {
		lc.Answered()
	}
	return Renewal{Deadline: sent.Add(time.Duration(resp.TTL)*time.Second - lc.Margin)}
}
