//go:build go1.24

package quietlock_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/internal/watchwait"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

// lockMetrics returns the value of each quietlock_lock_* metric in reg, by
// name without the prefix; a histogram's value is its sample count.
func lockMetrics(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		name := strings.TrimPrefix(mf.GetName(), "quietlock_lock_")
		for _, m := range mf.GetMetric() {
			switch mf.GetType() {
			case dto.MetricType_GAUGE:
				got[name] = m.GetGauge().GetValue()
			case dto.MetricType_COUNTER:
				got[name] = m.GetCounter().GetValue()
			case dto.MetricType_HISTOGRAM:
				got[name] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return got
}

func sameMetrics(t *testing.T, when string, got, want map[string]float64) {
	t.Helper()
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: %s = %v, want %v", when, name, got[name], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%s: metrics %v, want exactly %v", when, got, want)
	}
}

// A Mutex's metrics and logs: a waiting Lock moves only the waiting gauge,
// then a handover counts one acquisition and one write; a failed TryLock
// counts a failure and no write.
func TestLockMetrics(t *testing.T) {
	c := quietlocktest.New(t)
	const pfx = "/metrics"
	holder := lock.NewMutex(quietlocktest.NewSession(t, c.Client, ttl), pfx)
	lockOrFatal(t, holder)

	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := lock.NewMutex(quietlocktest.NewSession(t, c.Client, ttl), pfx, lock.WithRegisterer(reg), lock.WithLogger(log))
	zero := map[string]float64{"held": 0, "waiting": 0, "acquisitions_total": 0, "trylock_failures_total": 0, "wait_seconds": 0, "writes_total": 0, "watch_restarts_total": 0}
	sameMetrics(t, "new", lockMetrics(t, reg), zero)

	res, _ := lockAll(t, []*lock.Mutex{m})
	quietlocktest.WaitFor(t, "the waiter to wait", func() bool { return watchwait.Waiters() == 1 })
	before := c.Stats()
	waiting := map[string]float64{"held": 0, "waiting": 1, "acquisitions_total": 0, "trylock_failures_total": 0, "wait_seconds": 0, "writes_total": 0, "watch_restarts_total": 0}
	sameMetrics(t, "waiting", lockMetrics(t, reg), waiting)
	if got := c.Stats(); got.Revision != before.Revision || got.RaftIndex != before.RaftIndex {
		t.Errorf("reading the metrics wrote: %+v -> %+v", before, got)
	}

	unlockOrFatal(t, holder)
	if r := <-res; r.err != nil {
		t.Fatal(r.err)
	}
	sameMetrics(t, "after the handover", lockMetrics(t, reg), map[string]float64{
		"held": 1, "waiting": 0, "acquisitions_total": 1, "trylock_failures_total": 0, "wait_seconds": 1, "writes_total": 1, "watch_restarts_total": 0,
	})

	other := lock.NewMutex(quietlocktest.NewSession(t, c.Client, ttl), pfx, lock.WithRegisterer(reg))
	if err := other.TryLock(t.Context()); err != concurrency.ErrLocked {
		t.Fatalf("TryLock: %v", err)
	}
	unlockOrFatal(t, m)
	sameMetrics(t, "after a failed TryLock and Unlock", lockMetrics(t, reg), map[string]float64{
		"held": 0, "waiting": 0, "acquisitions_total": 1, "trylock_failures_total": 1, "wait_seconds": 1, "writes_total": 2, "watch_restarts_total": 0,
	})
	for _, want := range []string{"lock: acquired", "lock: unlocked"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

func TestLockBadOptions(t *testing.T) {
	c := quietlocktest.New(t)
	s := quietlocktest.NewSession(t, c.Client, ttl)
	before := c.Stats()
	for name, opts := range map[string][]lock.Option{
		"nil option":     {nil},
		"nil logger":     {lock.WithLogger(nil)},
		"nil registerer": {lock.WithRegisterer(nil)},
	} {
		m := lock.NewMutex(s, "/bad", opts...)
		if err := m.Lock(t.Context()); !errors.Is(err, lock.ErrBadOption) {
			t.Errorf("%s: Lock: got %v, want ErrBadOption", name, err)
		}
		if err := m.TryLock(t.Context()); !errors.Is(err, lock.ErrBadOption) {
			t.Errorf("%s: TryLock: got %v, want ErrBadOption", name, err)
		}
	}
	if got := c.Stats(); got.Revision != before.Revision || got.RaftIndex != before.RaftIndex {
		t.Errorf("bad options wrote: %+v -> %+v", before, got)
	}
}
