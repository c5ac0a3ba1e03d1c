// Package retry decides which etcd errors are worth retrying and paces the
// retries. It is used only for transient failures of requests, never as a way
// to wait for a lock: waiting is done by watching.
package retry

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Backoff bounds: the first retry comes quickly (a leader election or a
// reconnect usually settles within a second); later ones are spaced out so a
// long outage costs few requests.
const (
	initialInterval = 50 * time.Millisecond
	maxInterval     = 2 * time.Second
)

// NewBackOff returns a fresh exponential backoff for one retry sequence.
func NewBackOff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = initialInterval
	b.MaxInterval = maxInterval
	b.Reset()
	return b
}

// Sleep waits for d or until ctx is done, whichever comes first, and returns
// ctx.Err() in the latter case.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Transient reports whether err is a failure that may go away by itself: no
// leader, a lost connection, a request that timed out. The caller must
// still check its own context; a cancelled context is never transient.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return transientCode(ee.Code())
	}
	if s, ok := status.FromError(err); ok {
		return transientCode(s.Code())
	}
	return false
}

func transientCode(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
		return true
	}
	return false
}

// Permanent reports whether err will not go away by retrying: the request
// is refused as such (permission, bad argument), not because of the
// cluster's state.
func Permanent(err error) bool {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return permanentCode(ee.Code())
	}
	if s, ok := status.FromError(err); ok {
		return permanentCode(s.Code())
	}
	return false
}

func permanentCode(c codes.Code) bool {
	switch c {
	case codes.PermissionDenied, codes.InvalidArgument, codes.Unimplemented:
		return true
	}
	return false
}
