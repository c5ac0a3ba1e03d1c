package lock

import (
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quietlock/quietlock/internal/silent"
)

// Option configures a [Mutex]; see [NewMutex].
type Option interface {
	apply(*options) error
}

type options struct {
	log *slog.Logger
	reg prometheus.Registerer
}

type optionFunc func(*options) error

func (f optionFunc) apply(o *options) error { return f(o) }

// WithLogger makes the Mutex log its acquisitions, releases, the ends of its
// holds and the errors of its calls to l, at debug level for the normal
// course of things and at warn level for errors. By default it logs nothing.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrBadOption)
		}
		o.log = l
		return nil
	})
}

// WithRegisterer makes the Mutex register its metrics with r (see
// [NewMutex] for the list). By default it keeps no metrics. Mutexes on
// different prefixes can share a registerer; Mutexes on the same prefix
// share the same metrics.
func WithRegisterer(r prometheus.Registerer) Option {
	return optionFunc(func(o *options) error {
		if r == nil {
			return fmt.Errorf("%w: nil registerer", ErrBadOption)
		}
		o.reg = r
		return nil
	})
}

func newOptions(opts []Option) (*options, error) {
	o := &options{log: silent.Logger()}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option", ErrBadOption)
		}
		if err := opt.apply(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}
