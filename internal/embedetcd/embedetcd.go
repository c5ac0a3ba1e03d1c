// Package embedetcd runs a real single-member etcd server in-process, for
// tests, examples, benchmarks and the demo, and reads what it stores and
// serves, so callers can show that an operation wrote nothing and left
// nothing behind.
//
// Every server listens on free loopback ports only and keeps its data in a
// directory the caller owns.
package embedetcd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// startTimeout bounds how long a server may take to become ready.
const startTimeout = 30 * time.Second

// Server is one running single-member etcd.
type Server struct {
	Endpoint string // client URL, http://127.0.0.1:port
	dir      string
	cfg      embed.Config

	mu   sync.Mutex
	etcd *embed.Etcd // nil while closed
}

// Start starts a single-member etcd with its data in dir. The caller must
// call Close.
func Start(dir string) (*Server, error) {
	var lastErr error
	// A free port found by listening on :0 can be taken by someone else before
	// etcd binds it, so a failed bind is retried with fresh ports.
	for range 5 {
		s, err := start(dir)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func start(dir string) (*Server, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	curl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	purl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}

	cfg := embed.NewConfig()
	cfg.Name = "default"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{curl}
	cfg.AdvertiseClientUrls = []url.URL{curl}
	cfg.ListenPeerUrls = []url.URL{purl}
	cfg.AdvertisePeerUrls = []url.URL{purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: start: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedetcd: start: %w", err)
	case <-time.After(startTimeout):
		e.Close()
		return nil, errors.New("embedetcd: server not ready in time")
	}
	return &Server{etcd: e, Endpoint: curl.String(), dir: dir, cfg: *cfg}, nil
}

func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("embedetcd: free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Close stops the server and waits for it to exit. A closed server can be
// started again with [Server.Revive].
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil {
		s.etcd.Close()
		s.etcd = nil
	}
}

// Revive starts a closed server again on the same data directory and ports.
func (s *Server) Revive() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil {
		return nil
	}
	cfg := s.cfg
	var err error
	// The old listeners may take a moment to release their ports.
	for range 50 {
		var e *embed.Etcd
		if e, err = embed.StartEtcd(&cfg); err == nil {
			select {
			case <-e.Server.ReadyNotify():
				s.etcd = e
				return nil
			case err = <-e.Err():
				e.Close()
			case <-time.After(startTimeout):
				e.Close()
				return errors.New("embedetcd: restarted server not ready in time")
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("embedetcd: restart: %w", err)
}

// StartCluster starts an n-member cluster, member i with its data in
// dirs[i], and returns once every member is ready. The caller must close
// every member.
func StartCluster(dirs []string) ([]*Server, error) {
	n := len(dirs)
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	cfgs := make([]*embed.Config, n)
	var initial []string
	for i := range n {
		curl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i])}
		purl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])}
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = dirs[i]
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfgs[i] = cfg
		initial = append(initial, fmt.Sprintf("%s=%s", cfg.Name, purl.String()))
	}
	servers := make([]*Server, n)
	closeAll := func() {
		for _, s := range servers {
			if s != nil {
				s.Close()
			}
		}
	}
	for i, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("embedetcd: start member %d: %w", i, err)
		}
		servers[i] = &Server{etcd: e, Endpoint: cfg.ListenClientUrls[0].String(), dir: dirs[i], cfg: *cfg}
	}
	for i, s := range servers {
		select {
		case <-s.etcd.Server.ReadyNotify():
		case err := <-s.etcd.Err():
			closeAll()
			return nil, fmt.Errorf("embedetcd: member %d: %w", i, err)
		case <-time.After(startTimeout):
			closeAll()
			return nil, fmt.Errorf("embedetcd: member %d not ready in time", i)
		}
	}
	return servers, nil
}

// ClientConfig is the client configuration tests use for endpoint: quiet,
// with a short dial timeout and a short reconnect backoff, so that a test
// that breaks connections heals quickly.
func ClientConfig(endpoint string) clientv3.Config {
	return clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})},
	}
}

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
// The watcher gauges are process-wide for embedded servers: run one embedded
// server at a time when comparing them.
func ReadStats(ctx context.Context, c *clientv3.Client, endpoint string) (Stats, error) {
	st, err := c.Status(ctx, strings.TrimPrefix(endpoint, "http://"))
	if err != nil {
		return Stats{}, fmt.Errorf("embedetcd: status: %w", err)
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
		return nil, fmt.Errorf("embedetcd: metrics: %w", err)
	}
	// No idle connection may outlive the scrape (or the server).
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: metrics: %w", err)
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
		return nil, fmt.Errorf("embedetcd: metrics: %w", err)
	}
	out := make([]float64, len(names))
	for i, n := range names {
		v, ok := found[n]
		if !ok {
			return nil, fmt.Errorf("embedetcd: metric %s not served", n)
		}
		out[i] = v
	}
	return out, nil
}

// StartInTempDir starts a server in a new temporary directory, for examples
// and benchmarks. stop stops the server and removes the directory.
func StartInTempDir() (endpoint string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "quietlock-etcd")
	if err != nil {
		return "", nil, fmt.Errorf("embedetcd: %w", err)
	}
	s, err := Start(dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return s.Endpoint, func() { s.Close(); os.RemoveAll(dir) }, nil
}
