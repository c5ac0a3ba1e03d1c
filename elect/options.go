package elect

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quietlock/quietlock/internal/silent"
)

// Defaults of [Run]'s options.
const (
	// DefaultTTL is the session TTL: how long after its last answered
	// keepalive a crashed leader is replaced.
	DefaultTTL = 10 * time.Second

	// DefaultSafetyMargin is how long before the earliest moment its lease
	// could expire a leader that hears nothing from etcd steps down, unless
	// a quarter of the TTL is less. It must cover this process's scheduling
	// delays and the time the leading callback needs to stop acting once its
	// context is cancelled.
	DefaultSafetyMargin = time.Second
)

// Option configures [Run].
type Option interface {
	apply(*options) error
}

type options struct {
	ttl    time.Duration
	margin *time.Duration // nil: the default
	log    *slog.Logger
	reg    prometheus.Registerer
	health *Health
}

type optionFunc func(*options) error

func (f optionFunc) apply(o *options) error { return f(o) }

// WithTTL sets the session TTL, a whole number of seconds, at least one
// (default [DefaultTTL]). etcd may grant more than asked for (its minimum
// TTL); the leader's deadline follows what etcd granted.
func WithTTL(ttl time.Duration) Option {
	return optionFunc(func(o *options) error {
		if ttl < time.Second || ttl%time.Second != 0 {
			return fmt.Errorf("%w: TTL %v is not a whole number of seconds >= 1s", ErrBadOption, ttl)
		}
		o.ttl = ttl
		return nil
	})
}

// WithSafetyMargin sets how long before the earliest possible expiry of its
// lease a leader that has not heard from etcd steps down (default
// [DefaultSafetyMargin], or a quarter of the TTL if that is less). It must be
// positive, to cover this process's own timer and scheduling delays, and
// less than half the TTL, so that renewals have time to be answered.
func WithSafetyMargin(d time.Duration) Option {
	return optionFunc(func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: safety margin %v is not positive", ErrBadOption, d)
		}
		o.margin = &d
		return nil
	})
}

// WithLogger makes [Run] log its state changes and the errors it retries to
// l. By default it logs nothing.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrBadOption)
		}
		o.log = l
		return nil
	})
}

// WithRegisterer makes [Run] register its metrics with r (see [Run] for the
// list). By default it keeps no metrics. Runs on different prefixes can share
// a registerer; runs on the same prefix share the same metrics.
func WithRegisterer(r prometheus.Registerer) Option {
	return optionFunc(func(o *options) error {
		if r == nil {
			return fmt.Errorf("%w: nil registerer", ErrBadOption)
		}
		o.reg = r
		return nil
	})
}

// WithHealth makes [Run] report its state to h, for health and readiness
// checks (see [Health]). By default it reports to none. Run returns an error
// wrapping [ErrBadOption] if h's bound does not suit the TTL (see
// [NewHealth]) or if h is reporting on another Run that has not returned.
func WithHealth(h *Health) Option {
	return optionFunc(func(o *options) error {
		if h == nil {
			return fmt.Errorf("%w: nil health", ErrBadOption)
		}
		o.health = h
		return nil
	})
}

func newOptions(opts []Option) (*options, error) {
	o := &options{ttl: DefaultTTL, log: silent.Logger()}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option", ErrBadOption)
		}
		if err := opt.apply(o); err != nil {
			return nil, err
		}
	}
	if o.margin == nil {
		m := min(DefaultSafetyMargin, o.ttl/4)
		o.margin = &m
	}
	if 2**o.margin >= o.ttl {
		return nil, fmt.Errorf("%w: safety margin %v is not less than half the TTL %v", ErrBadOption, *o.margin, o.ttl)
	}
	if o.health != nil {
		if err := o.health.check(o.ttl); err != nil {
			return nil, err
		}
	}
	return o, nil
}
