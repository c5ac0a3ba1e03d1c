package elect

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quietlock/quietlock/internal/promreg"
)

// metrics are [Run]'s counters. Without a registerer they are kept but not
// exported.
type metrics struct {
	isLeader      prometheus.Gauge
	changes       prometheus.Counter
	attempts      prometheus.Counter
	writes        prometheus.Counter
	watchRestarts prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, pfx string) (*metrics, error) {
	labels := prometheus.Labels{"prefix": pfx}
	m := &metrics{
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "quietlock", Subsystem: "elect", Name: "is_leader",
			Help: "1 while this process leads the election, 0 otherwise.", ConstLabels: labels,
		}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "elect", Name: "leadership_changes_total",
			Help: "Terms of this process that started or ended.", ConstLabels: labels,
		}),
		attempts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "elect", Name: "acquisition_attempts_total",
			Help: "Attempts to become leader that sent a request (a read, and a claim if the election looked free).", ConstLabels: labels,
		}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "elect", Name: "writes_total",
			Help: "Requests sent that cost etcd a raft entry if they reach it: lease grants and revokes, claims, resignations.", ConstLabels: labels,
		}),
		watchRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "elect", Name: "watch_restarts_total",
			Help: "Times following the leader had to start over after a failed read or watch (compaction, lost connection, no leader).", ConstLabels: labels,
		}),
	}
	if reg == nil {
		return m, nil
	}
	var errs [5]error
	m.isLeader, errs[0] = promreg.Register(reg, m.isLeader)
	m.changes, errs[1] = promreg.Register(reg, m.changes)
	m.attempts, errs[2] = promreg.Register(reg, m.attempts)
	m.writes, errs[3] = promreg.Register(reg, m.writes)
	m.watchRestarts, errs[4] = promreg.Register(reg, m.watchRestarts)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("elect: register metrics: %w", err)
	}
	return m, nil
}
