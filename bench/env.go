package bench

import (
	"context"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/quietlocktest"
)

// prefix is the lock every experiment uses.
const prefix = "/bench/lock"

// env is one embedded etcd server with the clients and sessions of one
// experiment. Everything it made is closed by close.
type env struct {
	endpoint string
	stop     func()
	admin    *clientv3.Client

	mu       sync.Mutex
	clients  []*clientv3.Client
	sessions []*concurrency.Session
}

func newEnv() (*env, error) {
	endpoint, stop, err := quietlocktest.StartInTempDir()
	if err != nil {
		return nil, err
	}
	e := &env{endpoint: endpoint, stop: stop}
	if e.admin, err = e.client(); err != nil {
		stop()
		return nil, err
	}
	return e, nil
}

func (e *env) client() (*clientv3.Client, error) {
	cli, err := clientv3.New(quietlocktest.ClientConfig(e.endpoint))
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.clients = append(e.clients, cli)
	e.mu.Unlock()
	return cli, nil
}

func (e *env) session(cli *clientv3.Client, ttl int) (*concurrency.Session, error) {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.sessions = append(e.sessions, s)
	e.mu.Unlock()
	return s, nil
}

// contender makes a contender of strategy st with a client and a session of
// its own.
func (e *env) contender(st Strategy, ttl int) (contender, *concurrency.Session, error) {
	cli, err := e.client()
	if err != nil {
		return nil, nil, err
	}
	s, err := e.session(cli, ttl)
	if err != nil {
		return nil, nil, err
	}
	c, err := newContender(st, s, prefix)
	return c, s, err
}

func (e *env) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.sessions {
		s.Orphan() // the server goes away with everything in it
	}
	for _, c := range e.clients {
		c.Close()
	}
	e.stop()
}

// stats returns the store revision and raft applied index.
func (e *env) stats(ctx context.Context) (rev, raft int64, err error) {
	st, err := e.admin.Status(ctx, strings.TrimPrefix(e.endpoint, "http://"))
	if err != nil {
		return 0, 0, err
	}
	return st.Header.Revision, int64(st.RaftAppliedIndex), nil
}

// watchers returns the server's watcher and watch-stream gauges. They are
// process-wide: read them only while one experiment runs.
func (e *env) watchers(ctx context.Context) (watchers, streams int64, err error) {
	m, err := quietlocktest.Metrics(ctx, e.endpoint, "etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_watch_stream_total")
	if err != nil {
		return 0, 0, err
	}
	return int64(m[0]), int64(m[1]), nil
}

func (e *env) keys(ctx context.Context) (int64, error) {
	resp, err := e.admin.Get(ctx, prefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}

// group runs contenders' goroutines and waits for them.
type group struct {
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

func (g *group) stop() {
	g.cancel()
	g.wg.Wait()
}
