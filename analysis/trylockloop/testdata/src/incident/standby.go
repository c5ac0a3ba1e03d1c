// Package incident is a standby in the shape of the incident: it fails to
// get the lock at start, then tries again every TTL.
package incident

import (
	"context"
	"log"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

const ttl = 5 * time.Second

type Standby struct {
	cli    *clientv3.Client
	mu     *concurrency.Mutex
	prefix string
	lead   func(context.Context)
}

// Run polls: one attempt at start, then one every TTL while another
// process leads. Each failed attempt is a put and a delete, forever.
func (s *Standby) Run(ctx context.Context) error {
	if err := s.mu.TryLock(ctx); err == nil {
		s.lead(ctx)
		return nil
	} else if err != concurrency.ErrLocked {
		return err
	}
	log.Printf("standby: %s is held elsewhere, retrying every %v", s.prefix, ttl)
	for {
		time.Sleep(ttl)
		err := s.mu.TryLock(ctx) // want `TryLock in a loop: each failed TryLock writes 2 revisions and 2 raft entries`
		switch err {
		case nil:
			s.lead(ctx)
			return nil
		case concurrency.ErrLocked:
			continue
		default:
			return err
		}
	}
}

// RunWatching is the usual "fix": wait for a change under the prefix
// instead of sleeping. Every failed TryLock changes the prefix twice.
func (s *Standby) RunWatching(ctx context.Context) error {
	for resp := range s.cli.Watch(ctx, s.prefix, clientv3.WithPrefix()) {
		_ = resp
		switch err := s.mu.TryLock(ctx); err { // want `TryLock on every etcd watch event: each failed TryLock's put and delete wake every other watcher, which try again: a write storm`
		case nil:
			s.lead(ctx)
			return nil
		case concurrency.ErrLocked:
		default:
			return err
		}
	}
	return ctx.Err()
}
