package retry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/quietlock/quietlock/internal/retry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err                  error
		transient, permanent bool
	}{
		{nil, false, false},
		{context.Canceled, false, false},
		{context.DeadlineExceeded, true, false},
		{rpctypes.ErrNoLeader, true, false},
		{rpctypes.ErrTimeout, true, false},
		{fmt.Errorf("lock: claim: %w", rpctypes.ErrLeaderChanged), true, false},
		{status.Error(codes.Unavailable, "connection refused"), true, false},
		{rpctypes.ErrPermissionDenied, false, true},
		{rpctypes.ErrLeaseNotFound, false, false},
		{rpctypes.ErrCompacted, false, false},
		{errors.New("something else"), false, false},
	} {
		if got := retry.Transient(tc.err); got != tc.transient {
			t.Errorf("Transient(%v): got %v, want %v", tc.err, got, tc.transient)
		}
		if got := retry.Permanent(tc.err); got != tc.permanent {
			t.Errorf("Permanent(%v): got %v, want %v", tc.err, got, tc.permanent)
		}
	}
}
