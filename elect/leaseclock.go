package elect

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/quietlock/quietlock/internal/retry"
)

// errLeaseGone is a renewal's error when etcd says the lease does not exist.
var errLeaseGone = errors.New("elect: lease not found")

// leaseClock learns, from renewals it sends itself, a moment before which
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
type leaseClock struct {
	cli    *clientv3.Client
	id     clientv3.LeaseID
	margin time.Duration
	// answered, if not nil, is called as each answer to a renewal arrives.
	answered func()
}

// renewal is what one answered (or failed) renewal proves.
type renewal struct {
	deadline time.Time // send time + granted TTL - margin
	err      error
}

// run renews the lease at once and then every interval, sending what each
// renewal proves to out, until ctx ends. A failed renewal is retried sooner,
// with a backoff. run never blocks its reader: out must have room for one
// value, and the reader must keep reading until run returns.
func (lc leaseClock) run(ctx context.Context, interval time.Duration, out chan<- renewal) {
	ctx = clientv3.WithRequireLeader(ctx)
	leases := pb.NewLeaseClient(lc.cli.ActiveConnection())
	bo := retry.NewBackOff()
	var stream pb.Lease_LeaseKeepAliveClient
	for {
		var r renewal
		if stream == nil {
			var err error
			if stream, err = leases.LeaseKeepAlive(ctx); err != nil {
				r.err = fmt.Errorf("elect: open keepalive stream: %w", err)
			}
		}
		if stream != nil {
			r = lc.renew(stream)
			if r.err != nil && !errors.Is(r.err, errLeaseGone) {
				stream = nil // broken: open a new one next time
			}
		}
		select {
		case out <- r:
		case <-ctx.Done():
			return
		}
		wait := interval
		if r.err != nil {
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
func (lc leaseClock) renew(stream pb.Lease_LeaseKeepAliveClient) renewal {
	sent := time.Now()
	if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(lc.id)}); err != nil {
		return renewal{err: fmt.Errorf("elect: renew lease: %w", err)}
	}
	resp, err := stream.Recv()
	switch {
	case err != nil:
		return renewal{err: fmt.Errorf("elect: renew lease: %w", err)}
	case resp.TTL <= 0:
		return renewal{err: errLeaseGone}
	}
	if lc.answered != nil {
		lc.answered()
	}
	return renewal{deadline: sent.Add(time.Duration(resp.TTL)*time.Second - lc.margin)}
}
