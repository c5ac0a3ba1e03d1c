//go:build go1.24

package quietlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

// Every exported constructor and method, given bad input or called out of
// turn, returns a clear error (or its documented result) and leaves nothing
// in etcd.
func TestBadInputEverywhere(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/quietlock/test/bad"
	good := quietlocktest.NewSession(t, c.NewClient(), ttl)
	closedSession := quietlocktest.NewSession(t, c.NewClient(), ttl)
	if err := closedSession.Close(); err != nil {
		t.Fatal(err)
	}
	// A session whose client is then closed.
	deadCli, err := clientv3.New(quietlocktest.ClientConfig(c.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	deadSession, err := concurrency.NewSession(deadCli, concurrency.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	deadCli.Close()
	<-deadSession.Done()

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	// A Mutex and an Election that hold, for the calls that need a holder.
	held := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx+"/held")
	leader := elect.NewElection(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx+"/leader")

	for _, tc := range []struct {
		name   string
		call   func(ctx context.Context) error
		want   error // nil: success
		writes bool  // the call may write (and must clean up)
	}{
		{"lock: nil session Lock", lock.NewMutex(nil, pfx).Lock, lock.ErrNilSession, false},
		{"lock: nil session TryLock", lock.NewMutex(nil, pfx).TryLock, lock.ErrNilSession, false},
		{"lock: nil session Unlock", lock.NewMutex(nil, pfx).Unlock, lock.ErrNilSession, false},
		{"lock: empty prefix Lock", lock.NewMutex(good, "").Lock, lock.ErrEmptyPrefix, false},
		{"lock: empty prefix TryLock", lock.NewMutex(good, "").TryLock, lock.ErrEmptyPrefix, false},
		{"lock: closed session Lock", lock.NewMutex(closedSession, pfx).Lock, concurrency.ErrSessionExpired, false},
		{"lock: closed session TryLock", lock.NewMutex(closedSession, pfx).TryLock, concurrency.ErrSessionExpired, false},
		{"lock: closed client Lock", lock.NewMutex(deadSession, pfx).Lock, concurrency.ErrSessionExpired, false},
		{"lock: Unlock without a hold", lock.NewMutex(good, pfx).Unlock, lock.ErrNotHeld, false},
		{"lock: cancelled Lock", lock.NewMutex(good, pfx).Lock, context.Canceled, false},
		{"lock: cancelled TryLock", lock.NewMutex(good, pfx).TryLock, context.Canceled, false},
		{"lock: Lock", held.Lock, nil, true},
		{"lock: cancelled Unlock keeps the hold", func(context.Context) error {
			err := held.Unlock(cancelled)
			if held.Rev() == 0 {
				return errors.New("hold dropped")
			}
			return err
		}, context.Canceled, false},
		{"lock: Unlock", held.Unlock, nil, true},
		{"lock: Unlock twice", held.Unlock, lock.ErrNotHeld, false},

		{"elect: nil session Campaign", func(ctx context.Context) error { return elect.NewElection(nil, pfx).Campaign(ctx, "v") }, elect.ErrNilSession, false},
		{"elect: nil session Proclaim", func(ctx context.Context) error { return elect.NewElection(nil, pfx).Proclaim(ctx, "v") }, elect.ErrNilSession, false},
		{"elect: nil session Resign", elect.NewElection(nil, pfx).Resign, elect.ErrNilSession, false},
		{"elect: nil session Leader", func(ctx context.Context) error { _, err := elect.NewElection(nil, pfx).Leader(ctx); return err }, elect.ErrNilSession, false},
		{"elect: empty prefix Campaign", func(ctx context.Context) error { return elect.NewElection(good, "").Campaign(ctx, "v") }, elect.ErrEmptyPrefix, false},
		{"elect: closed session Campaign", func(ctx context.Context) error { return elect.NewElection(closedSession, pfx).Campaign(ctx, "v") }, concurrency.ErrSessionExpired, false},
		{"elect: closed client Campaign", func(ctx context.Context) error { return elect.NewElection(deadSession, pfx).Campaign(ctx, "v") }, concurrency.ErrSessionExpired, false},
		{"elect: Proclaim without leading", func(ctx context.Context) error { return elect.NewElection(good, pfx).Proclaim(ctx, "v") }, concurrency.ErrElectionNotLeader, false},
		{"elect: Resign without leading", elect.NewElection(good, pfx).Resign, nil, false},
		{"elect: Leader with none", func(ctx context.Context) error { _, err := elect.NewElection(good, pfx).Leader(ctx); return err }, concurrency.ErrElectionNoLeader, false},
		{"elect: cancelled Campaign", func(ctx context.Context) error { return elect.NewElection(good, pfx).Campaign(ctx, "v") }, context.Canceled, false},
		{"elect: cancelled Leader", func(ctx context.Context) error { _, err := elect.NewElection(good, pfx).Leader(ctx); return err }, context.Canceled, false},
		{"elect: Observe on nil session closes", func(ctx context.Context) error {
			if _, ok := <-elect.NewElection(nil, pfx).Observe(context.Background()); ok {
				return errors.New("delivered a response")
			}
			return nil
		}, nil, false},
		{"elect: cancelled Observe closes", func(context.Context) error {
			for range elect.NewElection(good, pfx).Observe(cancelled) {
			}
			return nil
		}, nil, false},
		{"elect: Campaign", func(ctx context.Context) error { return leader.Campaign(ctx, "v") }, nil, true},
		{"elect: cancelled Proclaim keeps leading", func(context.Context) error {
			err := leader.Proclaim(cancelled, "w")
			if leader.Rev() == 0 {
				return errors.New("leadership dropped")
			}
			return err
		}, context.Canceled, false},
		{"elect: cancelled Resign keeps leading", func(context.Context) error {
			err := leader.Resign(cancelled)
			if leader.Rev() == 0 {
				return errors.New("leadership dropped")
			}
			return err
		}, context.Canceled, false},
		{"elect: Resign", leader.Resign, nil, true},
		{"elect: Resign twice", leader.Resign, nil, false},

		{"Run: nil client", func(ctx context.Context) error { return elect.Run(ctx, nil, pfx, "a", elect.Callbacks{}) }, elect.ErrNilClient, false},
		{"Run: empty prefix", func(ctx context.Context) error { return elect.Run(ctx, c.Client, "", "a", elect.Callbacks{}) }, elect.ErrEmptyPrefix, false},
		{"Run: empty identity", func(ctx context.Context) error { return elect.Run(ctx, c.Client, pfx, "", elect.Callbacks{}) }, elect.ErrEmptyIdentity, false},
		{"Run: zero TTL", func(ctx context.Context) error {
			return elect.Run(ctx, c.Client, pfx, "a", elect.Callbacks{}, elect.WithTTL(0))
		}, elect.ErrBadOption, false},
		{"Run: negative TTL", func(ctx context.Context) error {
			return elect.Run(ctx, c.Client, pfx, "a", elect.Callbacks{}, elect.WithTTL(-time.Second))
		}, elect.ErrBadOption, false},
		{"Run: cancelled context returns nil", func(context.Context) error {
			return elect.Run(cancelled, c.Client, pfx, "a", elect.Callbacks{})
		}, nil, false},
		{"Run: closed client", func(ctx context.Context) error { return elect.Run(ctx, deadCli, pfx, "a", elect.Callbacks{}) }, elect.ErrClientClosed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			if errors.Is(tc.want, context.Canceled) {
				ctx = cancelled
			}
			before := c.Stats()
			err := tc.call(ctx)
			switch {
			case tc.want == nil && err != nil:
				t.Errorf("got %v, want success", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if after := c.Stats(); !tc.writes && (after.Revision != before.Revision || after.RaftIndex != before.RaftIndex) {
				t.Errorf("wrote: revision %d -> %d, raft index %d -> %d", before.Revision, after.Revision, before.RaftIndex, after.RaftIndex)
			}
		})
	}
	if got := c.Keys(pfx + "/"); len(got) != 0 {
		t.Errorf("keys left: %q", got)
	}

	// Prefixes are paths: "/a" and "/ab" are different elections too.
	a := elect.NewElection(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx+"/a")
	ab := elect.NewElection(quietlocktest.NewSession(t, c.NewClient(), ttl), pfx+"/ab")
	if err := a.Campaign(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithTimeout(t.Context(), 10*time.Second)
	defer stop()
	if err := ab.Campaign(ctx, "ab"); err != nil {
		t.Errorf("Campaign on /ab while /a has a leader: %v", err)
	}
	for _, e := range []*elect.Election{a, ab} {
		if err := e.Resign(t.Context()); err != nil {
			t.Error(err)
		}
	}
}
