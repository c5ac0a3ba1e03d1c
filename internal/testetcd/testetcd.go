// Package testetcd runs a real etcd server in-process for tests, examples and
// benchmarks, and counts what it stores, so tests can assert that an
// operation wrote nothing and left nothing behind.
//
// Every server listens on free loopback ports only and keeps its data in a
// directory the caller owns (a t.TempDir in tests).
package testetcd

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
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
)

// startTimeout bounds how long a server may take to become ready.
const startTimeout = 30 * time.Second

// Server is one running single-member etcd.
type Server struct {
	etcd     *embed.Etcd
	Endpoint string // client URL, http://127.0.0.1:port
	dir      string
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
		return nil, fmt.Errorf("testetcd: start: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("testetcd: start: %w", err)
	case <-time.After(startTimeout):
		e.Close()
		return nil, errors.New("testetcd: server not ready in time")
	}
	return &Server{etcd: e, Endpoint: curl.String(), dir: dir}, nil
}

func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("testetcd: free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Close stops the server and waits for it to exit.
func (s *Server) Close() { s.etcd.Close() }

// Restart stops the server and starts it again on the same data directory
// and ports, as a member restart would.
func (s *Server) Restart() error {
	cfg := s.etcd.Config()
	s.etcd.Close()
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
				return errors.New("testetcd: restarted server not ready in time")
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("testetcd: restart: %w", err)
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
		return Stats{}, fmt.Errorf("testetcd: status: %w", err)
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
		return nil, fmt.Errorf("testetcd: metrics: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("testetcd: metrics: %w", err)
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
		return nil, fmt.Errorf("testetcd: metrics: %w", err)
	}
	out := make([]float64, len(names))
	for i, n := range names {
		v, ok := found[n]
		if !ok {
			return nil, fmt.Errorf("testetcd: metric %s not served", n)
		}
		out[i] = v
	}
	return out, nil
}

// Cluster is a running etcd server with the helpers tests use on it.
type Cluster struct {
	*Server
	t testing.TB
	// Client is a client for the test's own reads and checks.
	Client *clientv3.Client
}

// New starts a server for the test in t.TempDir() and stops it when the
// test ends.
func New(t testing.TB) *Cluster {
	t.Helper()
	s, err := Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	c := &Cluster{Server: s, t: t}
	c.Client = c.NewClient()
	return c
}

// NewClient returns a new client of the server, closed when the test ends.
func (c *Cluster) NewClient() *clientv3.Client {
	c.t.Helper()
	return NewClient(c.t, c.Endpoint)
}

// NewClient returns a new client of endpoint, closed when the test ends.
func NewClient(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(ClientConfig(endpoint))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// NewCountingClient returns a new client of the server and a counter of the
// unary requests (reads, writes, lease grants: everything but streams) it
// has sent. The client is closed when the test ends.
func (c *Cluster) NewCountingClient() (*clientv3.Client, *atomic.Int64) {
	c.t.Helper()
	return NewCountingClient(c.t, c.Endpoint)
}

// NewCountingClient is [Cluster.NewCountingClient] for any endpoint.
func NewCountingClient(t testing.TB, endpoint string) (*clientv3.Client, *atomic.Int64) {
	t.Helper()
	n := new(atomic.Int64)
	cli := NewInterceptedClient(t, endpoint, func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		n.Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	return cli, n
}

// NewInterceptedClient returns a new client of endpoint whose unary
// requests all go through f, for tests that inject a failure at an exact
// point. The client is closed when the test ends.
func NewInterceptedClient(t testing.TB, endpoint string, f grpc.UnaryClientInterceptor) *clientv3.Client {
	t.Helper()
	cfg := ClientConfig(endpoint)
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithChainUnaryInterceptor(f))
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Stats returns the server's counters; it fails the test on error.
func (c *Cluster) Stats() Stats {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := ReadStats(ctx, c.Client, c.Endpoint)
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

// Keys returns the keys under prefix; it fails the test on error.
func (c *Cluster) Keys(prefix string) []string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		c.t.Fatal(err)
	}
	keys := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

// WaitFor polls cond until it holds, failing the test if it does not within
// 30 seconds. It is for waiting on a state (a count reached), never for
// asserting how long something took.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// NewSession returns a session of cli with the given TTL in seconds, closed
// when the test ends.
func NewSession(t testing.TB, cli *clientv3.Client, ttl int) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// StartInTempDir starts a server in a new temporary directory, for examples
// and benchmarks. stop stops the server and removes the directory.
func StartInTempDir() (endpoint string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "quietlock-etcd")
	if err != nil {
		return "", nil, fmt.Errorf("testetcd: %w", err)
	}
	s, err := Start(dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return s.Endpoint, func() { s.Close(); os.RemoveAll(dir) }, nil
}
