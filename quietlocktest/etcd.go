package quietlocktest

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Etcd is a running etcd server for one test, with the helpers tests use
// on it.
//
// Etcd is safe for concurrent use; its methods fail the test on error, so
// call them only from the test's goroutine or others that the test waits
// for.
type Etcd struct {
	// Endpoint is the server's client URL, http://127.0.0.1:port.
	Endpoint string
	// Client is a client for the test's own reads and checks.
	Client *clientv3.Client
	t      testing.TB
}

// EnvEtcd names the environment variable that makes [New] run an etcd
// binary (its value: the binary's path) instead of the embedded server, so
// the same tests run against another etcd release.
const EnvEtcd = "QUIETLOCK_TEST_ETCD"

// New starts a server for the test and stops it when the test ends: the
// embedded etcd with its data in t.TempDir(), or the binary named by
// $QUIETLOCK_TEST_ETCD ([EnvEtcd]). The server is quiet when New returns
// (see [WaitQuiet]), on free loopback ports.
func New(t testing.TB) *Etcd {
	t.Helper()
	if bin := os.Getenv(EnvEtcd); bin != "" {
		return NewExternal(t, bin)
	}
	s, err := StartServer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	c := &Etcd{Endpoint: s.Endpoint, t: t}
	c.Client = c.NewClient()
	return c
}

// NewClient returns a new client of the server, closed when the test ends.
func (c *Etcd) NewClient() *clientv3.Client {
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
func (c *Etcd) NewCountingClient() (*clientv3.Client, *atomic.Int64) {
	c.t.Helper()
	return NewCountingClient(c.t, c.Endpoint)
}

// NewCountingClient is [Etcd.NewCountingClient] for any endpoint.
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
func (c *Etcd) Stats() Stats {
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
func (c *Etcd) Keys(prefix string) []string {
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
