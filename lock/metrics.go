package lock

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quietlock/quietlock/internal/promreg"
)

// metrics are a Mutex's counters. Without a registerer they are kept but
// not exported.
type metrics struct {
	held          prometheus.Gauge
	waiting       prometheus.Gauge
	acquisitions  prometheus.Counter
	tryFailures   prometheus.Counter
	wait          prometheus.Observer
	writes        prometheus.Counter
	watchRestarts prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, pfx string) (*metrics, error) {
	labels := prometheus.Labels{"prefix": pfx}
	m := &metrics{
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "quietlock", Subsystem: "lock", Name: "held",
			Help: "Holds of the lock by this process that last (1 while held, 0 otherwise, for one Mutex per prefix).", ConstLabels: labels,
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "quietlock", Subsystem: "lock", Name: "waiting",
			Help: "Lock calls in progress (waiting, which costs etcd nothing, or attempting).", ConstLabels: labels,
		}),
		acquisitions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "lock", Name: "acquisitions_total",
			Help: "Holds taken by Lock or TryLock.", ConstLabels: labels,
		}),
		tryFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "lock", Name: "trylock_failures_total",
			Help: "TryLock calls that found the lock held elsewhere (each wrote nothing).", ConstLabels: labels,
		}),
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "quietlock", Subsystem: "lock", Name: "wait_seconds",
			Help:    "How long Lock calls took, whether they took the lock or not.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12), ConstLabels: labels,
		}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "lock", Name: "writes_total",
			Help: "Requests sent that cost etcd a raft entry if they reach it: claims, unlocks, removals of a claim.", ConstLabels: labels,
		}),
		watchRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "lock", Name: "watch_restarts_total",
			Help: "Times a waiting Lock's watch had to start over (compaction, lost connection, no leader).", ConstLabels: labels,
		}),
	}
	if reg == nil {
		return m, nil
	}
	hist := m.wait.(prometheus.Histogram)
	var errs [7]error
	m.held, errs[0] = promreg.Register(reg, m.held)
	m.acquisitions, errs[1] = promreg.Register(reg, m.acquisitions)
	m.tryFailures, errs[2] = promreg.Register(reg, m.tryFailures)
	hist, errs[3] = promreg.Register(reg, hist)
	m.wait = hist
	m.writes, errs[4] = promreg.Register(reg, m.writes)
	m.watchRestarts, errs[5] = promreg.Register(reg, m.watchRestarts)
	m.waiting, errs[6] = promreg.Register(reg, m.waiting)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("lock: register metrics: %w", err)
	}
	return m, nil
}
