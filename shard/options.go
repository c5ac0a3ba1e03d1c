package shard

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/internal/silent"
)

// Option configures [New].
type Option interface {
	apply(*options) error
}

type options struct {
	ttl      time.Duration
	margin   *time.Duration // nil: the default
	log      *slog.Logger
	reg      prometheus.Registerer
	inflight int
}

type optionFunc func(*options) error

func (f optionFunc) apply(o *options) error { return f(o) }

// WithTTL sets the TTL of the process's lease, a whole number of seconds,
// at least one (default elect.DefaultTTL): how long after its last answered
// renewal a crashed process's shards are led elsewhere.
func WithTTL(ttl time.Duration) Option {
	return optionFunc(func(o *options) error {
		if ttl < time.Second || ttl%time.Second != 0 {
			return fmt.Errorf("%w: TTL %v is not a whole number of seconds >= 1s", ErrBadOption, ttl)
		}
		o.ttl = ttl
		return nil
	})
}

// WithSafetyMargin sets how long before the earliest possible expiry of
// its lease a process that has not heard from etcd ends all its terms
// (default elect.DefaultSafetyMargin, or a quarter of the TTL if that is
// less). It must be positive and less than half the TTL; see
// elect.WithSafetyMargin.
func WithSafetyMargin(d time.Duration) Option {
	return optionFunc(func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: safety margin %v is not positive", ErrBadOption, d)
		}
		o.margin = &d
		return nil
	})
}

// WithLogger makes the runner log its state changes and the errors it
// retries to l. By default it logs nothing.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrBadOption)
		}
		o.log = l
		return nil
	})
}

// WithRegisterer makes the runner register its metrics with r (see [New]
// for the list). By default it keeps no metrics.
func WithRegisterer(r prometheus.Registerer) Option {
	return optionFunc(func(o *options) error {
		if r == nil {
			return fmt.Errorf("%w: nil registerer", ErrBadOption)
		}
		o.reg = r
		return nil
	})
}

// WithMaxInFlight bounds how many claims and resignations the runner has
// in flight at once (default 32): at start, and when a member joins or
// leaves, a process claims or hands over many shards at once.
func WithMaxInFlight(n int) Option {
	return optionFunc(func(o *options) error {
		if n < 1 {
			return fmt.Errorf("%w: max in flight %d is not positive", ErrBadOption, n)
		}
		o.inflight = n
		return nil
	})
}

func newOptions(opts []Option) (*options, error) {
	o := &options{ttl: elect.DefaultTTL, log: silent.Logger(), inflight: 32}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option", ErrBadOption)
		}
		if err := opt.apply(o); err != nil {
			return nil, err
		}
	}
	if o.margin == nil {
		m := min(elect.DefaultSafetyMargin, o.ttl/4)
		o.margin = &m
	}
	if 2**o.margin >= o.ttl {
		return nil, fmt.Errorf("%w: safety margin %v is not less than half the TTL %v", ErrBadOption, *o.margin, o.ttl)
	}
	return o, nil
}
