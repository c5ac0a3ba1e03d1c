package main

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// newSession grants a lease with the TTL (interrupted if ctx ends) and
// starts a session on it that keeps it alive.
func newSession(ctx context.Context, cli *clientv3.Client, ttl ttlValue) (*concurrency.Session, error) {
	secs := int64(time.Duration(ttl) / time.Second)
	lease, err := cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	s, err := concurrency.NewSession(cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(secs)))
	if err != nil {
		rctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		_, _ = cli.Revoke(rctx, lease.ID)
		return nil, fmt.Errorf("session: %w", err)
	}
	return s, nil
}

// closeSession stops keeping s's lease alive and revokes it, which deletes
// every key attached to it, bounded by cleanupTimeout: if etcd cannot be
// reached the lease expires by itself within the TTL.
func closeSession(s *concurrency.Session) {
	s.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	_, _ = s.Client().Revoke(ctx, s.Lease())
}
