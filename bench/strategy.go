// Package bench measures what each way of waiting for a lock on etcd costs
// the store, with quietlock and the usual alternatives side by side, each
// against a real embedded etcd server of its own.
//
// Its experiments are run by the Go benchmarks in this directory
// (go test -run '^$' -bench . ./bench) and by the matrix command
// (go run ./bench/cmd/matrix), which writes a Markdown table and an SVG chart.
package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/lock"
)

// Strategy is one way for a standby to wait for a lock.
type Strategy string

// The strategies compared.
const (
	// Poll1s calls concurrency.Mutex.TryLock every second.
	Poll1s Strategy = "poll-1s"
	// Poll5s calls concurrency.Mutex.TryLock every five seconds: the classic
	// incident.
	Poll5s Strategy = "poll-5s"
	// WatchPrefix calls TryLock once, then watches the prefix and calls
	// TryLock when events arrive: the widely shared fix.
	WatchPrefix Strategy = "watch-prefix"
	// EtcdMutex is concurrency.Mutex.Lock: etcd's queue.
	EtcdMutex Strategy = "etcd-mutex"
	// EtcdElection is concurrency.Election.Campaign.
	EtcdElection Strategy = "etcd-election"
	// QuietlockLock is lock.Mutex.Lock.
	QuietlockLock Strategy = "quietlock-lock"
	// QuietlockElect is elect.Election.Campaign.
	QuietlockElect Strategy = "quietlock-elect"
)

// Strategies lists every strategy, in the order reports use.
var Strategies = []Strategy{Poll1s, Poll5s, WatchPrefix, EtcdMutex, EtcdElection, QuietlockLock, QuietlockElect}

// polls reports whether s waits by polling, so that its handover latency
// is set by its period rather than by etcd.
func (s Strategy) polls() bool { return s == Poll1s || s == Poll5s }

// contender is one participant in a lock: it can wait for and take the
// lock, and give it back.
type contender interface {
	acquire(ctx context.Context) error
	release(ctx context.Context) error
}

func newContender(st Strategy, s *concurrency.Session, pfx string) (contender, error) {
	switch st {
	case Poll1s:
		return &poll{m: concurrency.NewMutex(s, pfx), every: time.Second}, nil
	case Poll5s:
		return &poll{m: concurrency.NewMutex(s, pfx), every: 5 * time.Second}, nil
	case WatchPrefix:
		return &watchPrefix{m: concurrency.NewMutex(s, pfx), cli: s.Client(), pfx: pfx + "/"}, nil
	case EtcdMutex:
		m := concurrency.NewMutex(s, pfx)
		return funcs{m.Lock, m.Unlock}, nil
	case EtcdElection:
		e := concurrency.NewElection(s, pfx)
		return funcs{func(ctx context.Context) error { return e.Campaign(ctx, "standby") }, e.Resign}, nil
	case QuietlockLock:
		m := lock.NewMutex(s, pfx)
		return funcs{m.Lock, m.Unlock}, nil
	case QuietlockElect:
		e := elect.NewElection(s, pfx)
		return funcs{func(ctx context.Context) error { return e.Campaign(ctx, "standby") }, e.Resign}, nil
	}
	return nil, fmt.Errorf("bench: unknown strategy %q", st)
}

type funcs struct{ acq, rel func(context.Context) error }

func (f funcs) acquire(ctx context.Context) error { return f.acq(ctx) }
func (f funcs) release(ctx context.Context) error { return f.rel(ctx) }

// poll calls TryLock every period until it wins.
type poll struct {
	m     *concurrency.Mutex
	every time.Duration
}

func (p *poll) acquire(ctx context.Context) error {
	t := time.NewTicker(p.every)
	defer t.Stop()
	for {
		err := p.m.TryLock(ctx)
		if !errors.Is(err, concurrency.ErrLocked) {
			return err
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *poll) release(ctx context.Context) error { return p.m.Unlock(ctx) }

// watchPrefix calls TryLock once, then watches the prefix from then on and
// calls TryLock whenever events arrive. Its own failed TryLocks are events on
// the prefix too: once anything wakes it, it wakes itself (and every other
// standby) again and again. Events that piled up while it was busy are
// taken as one wake-up, one TryLock: kinder to etcd than a TryLock per
// event, and it still storms.
type watchPrefix struct {
	m   *concurrency.Mutex
	cli *clientv3.Client
	pfx string
}

func (w *watchPrefix) acquire(ctx context.Context) error {
	err := w.m.TryLock(ctx)
	if !errors.Is(err, concurrency.ErrLocked) {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := w.cli.Watch(wctx, w.pfx, clientv3.WithPrefix())
	for {
		wr, ok := <-wch
	drain:
		for ok && wr.Err() == nil {
			select {
			case wr, ok = <-wch:
			default:
				break drain
			}
		}
		if !ok {
			return ctx.Err()
		}
		if err := wr.Err(); err != nil {
			return err
		}
		err := w.m.TryLock(ctx)
		if !errors.Is(err, concurrency.ErrLocked) {
			return err
		}
	}
}

func (w *watchPrefix) release(ctx context.Context) error { return w.m.Unlock(ctx) }
