package quietlocktest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
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

// Server is one running embedded etcd member.
//
// Server is safe for concurrent use.
type Server struct {
	Endpoint string // client URL, http://127.0.0.1:port
	dir      string
	cfg      embed.Config

	mu   sync.Mutex
	etcd *embed.Etcd // nil while closed
}

// StartServer starts a single-member etcd with its data in dir, on free
// loopback ports, and returns once it is ready and quiet (see [WaitQuiet]).
// The caller must call [Server.Close].
func StartServer(dir string) (*Server, error) {
	var lastErr error
	// A free port found by listening on :0 can be taken by someone else before
	// etcd binds it, so a failed bind is retried with fresh ports.
	for range 5 {
		s, err := start(dir)
		if err == nil {
			if err = s.waitQuiet(); err == nil {
				return s, nil
			}
			s.Close()
			return nil, err
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
		return nil, fmt.Errorf("quietlocktest: start: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("quietlocktest: start: %w", err)
	case <-time.After(startTimeout):
		e.Close()
		return nil, errors.New("quietlocktest: server not ready in time")
	}
	return &Server{etcd: e, Endpoint: curl.String(), dir: dir, cfg: *cfg}, nil
}

func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("quietlocktest: free port: %w", err)
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
// It returns once the member is ready; unlike [StartServer] it does not wait
// for the member to be quiet, since a revived member of a cluster may be
// catching up with entries the others wrote.
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
				return errors.New("quietlocktest: restarted server not ready in time")
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("quietlocktest: restart: %w", err)
}

// StartCluster starts an n-member cluster, member i with its data in
// dirs[i], on free loopback ports, and returns once every member is ready
// and quiet (see [WaitQuiet]). The caller must close every member.
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
			return nil, fmt.Errorf("quietlocktest: start member %d: %w", i, err)
		}
		servers[i] = &Server{etcd: e, Endpoint: cfg.ListenClientUrls[0].String(), dir: dirs[i], cfg: *cfg}
	}
	for i, s := range servers {
		select {
		case <-s.etcd.Server.ReadyNotify():
		case err := <-s.etcd.Err():
			closeAll()
			return nil, fmt.Errorf("quietlocktest: member %d: %w", i, err)
		case <-time.After(startTimeout):
			closeAll()
			return nil, fmt.Errorf("quietlocktest: member %d not ready in time", i)
		}
	}
	for _, s := range servers {
		if err := s.waitQuiet(); err != nil {
			closeAll()
			return nil, err
		}
	}
	return servers, nil
}

// ClientConfig is a client configuration for endpoint suited to tests: no
// logging, a 5 s dial timeout, and a short reconnect backoff (50 ms growing
// to at most 1 s), so that a client cut off by a [Proxy] reconnects quickly
// after [Proxy.Heal].
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

// StartInTempDir starts a server ([StartServer]) in a new temporary
// directory, for programs that need an etcd of their own (demos,
// benchmarks). stop stops the server and removes the directory.
func StartInTempDir() (endpoint string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "quietlock-etcd")
	if err != nil {
		return "", nil, fmt.Errorf("quietlocktest: %w", err)
	}
	s, err := StartServer(dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return s.Endpoint, func() { s.Close(); os.RemoveAll(dir) }, nil
}

// waitQuiet waits, bounded by startTimeout, until s is quiet.
func (s *Server) waitQuiet() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cli, err := clientv3.New(ClientConfig(s.Endpoint))
	if err != nil {
		return fmt.Errorf("quietlocktest: %w", err)
	}
	defer cli.Close()
	return WaitQuiet(ctx, cli, s.Endpoint)
}
