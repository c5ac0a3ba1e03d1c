package shard

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quietlock/quietlock/internal/promreg"
)

// metrics of a runner; without a registerer they are kept but not exported.
type metrics struct {
	leading       prometheus.Gauge
	members       prometheus.Gauge
	terms         prometheus.Counter
	writes        prometheus.Counter
	watchRestarts prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, pfx string) (*metrics, error) {
	labels := prometheus.Labels{"prefix": pfx}
	m := &metrics{
		leading: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "quietlock", Subsystem: "shard", Name: "leading",
			Help: "Shards this process leads.", ConstLabels: labels,
		}),
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "quietlock", Subsystem: "shard", Name: "members",
			Help: "Processes in the group, as this process sees it.", ConstLabels: labels,
		}),
		terms: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "shard", Name: "terms_total",
			Help: "Terms this process started, over all shards.", ConstLabels: labels,
		}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "shard", Name: "writes_total",
			Help: "Requests sent that cost etcd a raft entry if they reach it: lease grants and revokes, membership keys, claims, resignations.", ConstLabels: labels,
		}),
		watchRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "quietlock", Subsystem: "shard", Name: "watch_restarts_total",
			Help: "Times the watch of the prefix had to start over with a fresh read (compaction, lost connection, no leader).", ConstLabels: labels,
		}),
	}
	if reg == nil {
		return m, nil
	}
	var errs [5]error
	m.leading, errs[0] = promreg.Register(reg, m.leading)
	m.members, errs[1] = promreg.Register(reg, m.members)
	m.terms, errs[2] = promreg.Register(reg, m.terms)
	m.writes, errs[3] = promreg.Register(reg, m.writes)
	m.watchRestarts, errs[4] = promreg.Register(reg, m.watchRestarts)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("shard: register metrics: %w", err)
	}
	return m, nil
}
