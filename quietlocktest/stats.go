package quietlocktest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Stats is what a server has stored and is serving at one moment.
type Stats struct {
	Revision     int64 // store revision
	RaftIndex    int64 // raft applied index
	Watchers     int64 // etcd_debugging_mvcc_watcher_total
	WatchStreams int64 // etcd_debugging_mvcc_watch_stream_total
}

// ReadStats reads the store revision and raft applied index through a
// Status call (which writes nothing) and the watcher gauges from /metrics.
//
// etcd answers a write once it has applied the write's entry but a moment
// before it counts the entry as applied, so a Status call right after a
// write can report the applied index one short. ReadStats reads until the
// applied index has caught up with the commit index, so that every write
// already answered is counted.
//
// The watcher gauges are process-wide for embedded servers: run one embedded
// server at a time when comparing them.
func ReadStats(ctx context.Context, c *clientv3.Client, endpoint string) (Stats, error) {
	var st *clientv3.StatusResponse
	for {
		var err error
		st, err = c.Status(ctx, strings.TrimPrefix(endpoint, "http://"))
		if err != nil {
			return Stats{}, fmt.Errorf("quietlocktest: status: %w", err)
		}
		if st.RaftAppliedIndex >= st.RaftIndex {
			break
		}
		if err := sleepCtx(ctx, time.Millisecond); err != nil {
			return Stats{}, fmt.Errorf("quietlocktest: applied index behind the commit index: %w", err)
		}
	}
	m, err := Metrics(ctx, endpoint, "etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_watch_stream_total")
	if err != nil {
		return Stats{}, err
	}
	return Stats{
		Revision:     st.Header.Revision,
		RaftIndex:    int64(st.RaftAppliedIndex),
		Watchers:     int64(m[0]),
		WatchStreams: int64(m[1]),
	}, nil
}

// Metrics scrapes endpoint's /metrics and returns the value of each named
// unlabelled metric, in order.
func Metrics(ctx context.Context, endpoint string, names ...string) ([]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("quietlocktest: metrics: %w", err)
	}
	// No idle connection may outlive the scrape (or the server).
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("quietlocktest: metrics: %w", err)
	}
	defer resp.Body.Close()
	found := make(map[string]float64, len(names))
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		found[name] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("quietlocktest: metrics: %w", err)
	}
	out := make([]float64, len(names))
	for i, n := range names {
		v, ok := found[n]
		if !ok {
			return nil, fmt.Errorf("quietlocktest: metric %s not served", n)
		}
		out[i] = v
	}
	return out, nil
}

// notDecided is what etcd's /version reports as the cluster version until
// the cluster has agreed on one.
const notDecided = "not_decided"

// WaitQuiet waits until the etcd member at endpoint has applied the entries
// etcd writes by itself after it starts, so that from then on its store
// revision and raft index move only when a client writes.
//
// It waits for two things. First, the cluster version is decided (etcd's
// /version no longer says "not_decided"): setting it is the last entry etcd
// appends on its own after a start, and a member reports it only once it has
// applied it. Second, the member has applied everything committed and two
// consecutive reads, a few milliseconds apart, see the same applied index.
// c must be a client of the member (or of its cluster).
func WaitQuiet(ctx context.Context, c *clientv3.Client, endpoint string) error {
	for {
		v, err := clusterVersion(ctx, endpoint)
		if err == nil && v != "" && v != notDecided {
			break
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("quietlocktest: cluster version not decided at %s: %w", endpoint, err)
		}
	}
	host := strings.TrimPrefix(endpoint, "http://")
	var last uint64
	for stable := 0; stable < 2; {
		st, err := c.Status(ctx, host)
		switch {
		case err != nil:
			stable = 0
		case st.RaftAppliedIndex >= st.RaftIndex && st.RaftAppliedIndex == last:
			stable++
		default:
			stable, last = 0, st.RaftAppliedIndex
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("quietlocktest: raft index not stable at %s: %w", endpoint, err)
		}
	}
	return nil
}

// clusterVersion reads the cluster version from endpoint's /version.
func clusterVersion(ctx context.Context, endpoint string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/version", nil)
	if err != nil {
		return "", err
	}
	req.Close = true // no idle connection may outlive the server
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var v struct {
		Cluster string `json:"etcdcluster"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return "", err
	}
	return v.Cluster, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
