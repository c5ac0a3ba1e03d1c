package compat_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/shard"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The oldest etcd client the library supports, as its go.mod requires.
const oldestClient = "v3.6.0"

// etcd is a server process for one test.
type etcd struct {
	endpoint string
	cli      *clientv3.Client
}

// startEtcd runs the etcd binary named by $QUIETLOCK_TEST_ETCD (default
// /usr/bin/etcd) on free loopback ports, and returns once it is quiet: the
// cluster version is decided and the raft index stable.
func startEtcd(t *testing.T) *etcd {
	t.Helper()
	bin := os.Getenv("QUIETLOCK_TEST_ETCD")
	if bin == "" {
		bin = "/usr/bin/etcd"
	}
	if _, err := exec.LookPath(bin); err != nil {
		t.Fatalf("no etcd binary (set QUIETLOCK_TEST_ETCD, or apt-get install etcd-server): %v", err)
	}
	var ports [2]int
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	curl := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	purl := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	cmd := exec.Command(bin, "--name", "default", "--data-dir", t.TempDir(),
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
		"--initial-cluster", "default="+purl)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	e := &etcd{endpoint: curl, cli: newClient(t, curl)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if v, err := e.clusterVersion(ctx); err == nil && v != "" && v != "not_decided" {
			break
		}
		select {
		case <-exited:
			t.Fatalf("%s exited", bin)
		case <-ctx.Done():
			t.Fatalf("%s: cluster version not decided: %v", bin, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	for last, stable := int64(-1), 0; stable < 2; {
		st := e.stats(t)
		if st.raft == last {
			stable++
		} else {
			last, stable = st.raft, 0
		}
		time.Sleep(20 * time.Millisecond)
	}
	return e
}

func newClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func newSession(t *testing.T, cli *clientv3.Client) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (e *etcd) clusterVersion(ctx context.Context) (string, error) {
	body, err := e.get(ctx, "/version")
	if err != nil {
		return "", err
	}
	var v struct {
		Cluster string `json:"etcdcluster"`
	}
	err = json.Unmarshal([]byte(body), &v)
	return v.Cluster, err
}

func (e *etcd) get(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.endpoint+path, nil)
	if err != nil {
		return "", err
	}
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.String(), sc.Err()
}

type stats struct{ rev, raft, watchers int64 }

// stats reads the store revision and raft applied index (a Status call
// writes nothing) and the server's watcher gauge.
func (e *etcd) stats(t *testing.T) stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// etcd answers a write a moment before it counts its entry as
	// applied: read until the applied index has caught up with the commit
	// index, so that every write already answered is counted.
	var st *clientv3.StatusResponse
	for {
		var err error
		if st, err = e.cli.Status(ctx, strings.TrimPrefix(e.endpoint, "http://")); err != nil {
			t.Fatal(err)
		}
		if st.RaftAppliedIndex >= st.RaftIndex {
			break
		}
		time.Sleep(time.Millisecond)
	}
	m, err := e.get(ctx, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	s := stats{rev: st.Header.Revision, raft: int64(st.RaftAppliedIndex), watchers: -1}
	for _, l := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(l, "etcd_debugging_mvcc_watcher_total "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			s.watchers = int64(f)
		}
	}
	if s.watchers < 0 {
		t.Fatal("etcd_debugging_mvcc_watcher_total not served")
	}
	return s
}

func (e *etcd) keys(t *testing.T, prefix string) int {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return int(resp.Count)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestVersions records what this run is made of, and fails if the module
// did not resolve the oldest supported client.
func TestVersions(t *testing.T) {
	e := startEtcd(t)
	st, err := e.cli.Status(context.Background(), strings.TrimPrefix(e.endpoint, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	// The client and its api module are released together; api's version
	// package names the release.
	client := "v" + version.Version
	t.Logf("Go %s, etcd client %s, etcd server %s", runtime.Version(), client, st.Version)
	if client != oldestClient {
		t.Errorf("etcd client: got %s, want %s", client, oldestClient)
	}
}

func TestLock(t *testing.T) {
	e := startEtcd(t)
	const pfx = "/compat/lock"
	holder := lock.NewMutex(newSession(t, newClient(t, e.endpoint)), pfx)
	if err := holder.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	base := e.stats(t)

	const standbys = 3
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	won := make(chan *lock.Mutex, standbys)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for range standbys {
		m := lock.NewMutex(newSession(t, newClient(t, e.endpoint)), pfx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Lock(ctx); err == nil {
				won <- m
			}
		}()
	}
	waitFor(t, "standbys watching", func() bool { return e.stats(t).watchers >= base.watchers+standbys })
	before := e.stats(t)
	time.Sleep(2 * time.Second) // a window in which waiting must write nothing
	if got := e.stats(t); got.rev != before.rev || got.raft != before.raft {
		t.Errorf("waiting standbys wrote: revision %d -> %d, raft index %d -> %d", before.rev, got.rev, before.raft, got.raft)
	}
	if before.rev != base.rev {
		t.Errorf("standbys joining wrote %d revisions, want 0", before.rev-base.rev)
	}
	if n := e.keys(t, pfx+"/"); n != 1 {
		t.Errorf("keys under the prefix while waiting: got %d, want 1", n)
	}

	// A failed TryLock writes nothing.
	try := lock.NewMutex(newSession(t, newClient(t, e.endpoint)), pfx)
	before = e.stats(t)
	if err := try.TryLock(context.Background()); !errors.Is(err, concurrency.ErrLocked) {
		t.Errorf("TryLock: got %v, want %v", err, concurrency.ErrLocked)
	}
	if got := e.stats(t); got.rev != before.rev || got.raft != before.raft {
		t.Errorf("failed TryLock wrote: revision %d -> %d, raft index %d -> %d", before.rev, got.rev, before.raft, got.raft)
	}

	// A handover: exactly one standby wins, for 2 revisions.
	before = e.stats(t)
	if err := holder.Unlock(context.Background()); err != nil {
		t.Fatal(err)
	}
	next := <-won
	select {
	case m := <-won:
		t.Fatalf("two standbys hold the lock: %s and %s", next.Key(), m.Key())
	case <-time.After(500 * time.Millisecond):
	}
	if got := e.stats(t); got.rev != before.rev+2 {
		t.Errorf("handover: %d revisions, want 2", got.rev-before.rev)
	}
	for range standbys - 1 {
		if err := next.Unlock(context.Background()); err != nil {
			t.Fatal(err)
		}
		next = <-won
	}
	if err := next.Unlock(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.keys(t, pfx+"/"); n != 0 {
		t.Errorf("keys left: %d", n)
	}
}

func TestElection(t *testing.T) {
	e := startEtcd(t)
	const pfx = "/compat/election"
	ctx := context.Background()
	a := elect.NewElection(newSession(t, newClient(t, e.endpoint)), pfx)
	b := elect.NewElection(newSession(t, newClient(t, e.endpoint)), pfx)
	if err := a.Campaign(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	octx, ocancel := context.WithCancel(ctx)
	defer ocancel()
	obs := elect.NewElection(newSession(t, newClient(t, e.endpoint)), pfx).Observe(octx)
	expect := func(want string) {
		t.Helper()
		for resp := range obs {
			if len(resp.Kvs) > 0 && string(resp.Kvs[0].Value) == want {
				return
			}
		}
		t.Fatalf("observe closed before %q", want)
	}
	expect("a")

	campaigned := make(chan error, 1)
	go func() { campaigned <- b.Campaign(ctx, "b") }()
	waitFor(t, "b watching", func() bool { return e.stats(t).watchers >= 2 })
	before := e.stats(t)
	if err := a.Proclaim(ctx, "a2"); err != nil {
		t.Fatal(err)
	}
	expect("a2")
	if got := e.stats(t); got.rev != before.rev+1 {
		t.Errorf("proclaim with a candidate waiting: %d revisions, want 1", got.rev-before.rev)
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-campaigned; err != nil {
		t.Fatal(err)
	}
	expect("b")
	if err := b.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.keys(t, pfx+"/"); n != 0 {
		t.Errorf("keys left: %d", n)
	}
}

func TestRun(t *testing.T) {
	e := startEtcd(t)
	const pfx = "/compat/run"
	type term struct {
		id    string
		token int64
	}
	terms := make(chan term, 4)
	run := func(ctx context.Context, id string) <-chan error {
		done := make(chan error, 1)
		cli := newClient(t, e.endpoint)
		go func() {
			done <- elect.Run(ctx, cli, pfx, id, elect.Callbacks{
				OnStartedLeading: func(ctx context.Context, tm *elect.Term) {
					terms <- term{id, tm.Token}
					<-ctx.Done()
				},
			}, elect.WithTTL(2*time.Second), elect.WithSafetyMargin(500*time.Millisecond))
		}()
		return done
	}
	actx, acancel := context.WithCancel(context.Background())
	defer acancel()
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	adone := run(actx, "a")
	first := <-terms
	bdone := run(bctx, "b")
	waitFor(t, "b waiting", func() bool { return e.stats(t).watchers >= 1 })
	// Cancel the leader: it resigns, and the other takes over at once.
	leaderCancel, otherCancel, leaderDone, otherDone := acancel, bcancel, adone, bdone
	if first.id == "b" {
		leaderCancel, otherCancel, leaderDone, otherDone = bcancel, acancel, bdone, adone
	}
	leaderCancel()
	if err := <-leaderDone; err != nil {
		t.Errorf("Run of the first leader: %v", err)
	}
	second := <-terms
	if second.id == first.id || second.token <= first.token {
		t.Errorf("terms: first %+v, then %+v", first, second)
	}
	otherCancel()
	if err := <-otherDone; err != nil {
		t.Errorf("Run of the second leader: %v", err)
	}
	if n := e.keys(t, pfx+"/"); n != 0 {
		t.Errorf("keys left: %d", n)
	}
}

// shard.Runner on the oldest client and etcd 3.4: two processes share six
// shards three and three, write nothing while stable, and one leaving hands
// its shards to the other at once.
func TestShard(t *testing.T) {
	e := startEtcd(t)
	const pfx = "/compat/shard"
	shards := []string{"s0", "s1", "s2", "s3", "s4", "s5"}
	start := func(id string) (*shard.Runner, context.CancelFunc, <-chan error) {
		r, err := shard.New(newClient(t, e.endpoint), pfx, id, shard.Callbacks{
			OnStartedLeading: func(ctx context.Context, _ string, _ *elect.Term) { <-ctx.Done() },
		}, shard.WithTTL(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Add(shards...); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		return r, cancel, done
	}
	a, acancel, adone := start("a")
	defer acancel()
	b, bcancel, bdone := start("b")
	defer bcancel()
	waitFor(t, "three shards each", func() bool {
		return len(a.Leading()) == 3 && len(b.Leading()) == 3 && e.keys(t, pfx+"/shards/") == 6
	})
	// A claim that lost a race at the start may still be on its way (a
	// failed Txn is a raft entry): wait for the raft log to rest first.
	before := e.stats(t)
	waitFor(t, "the raft log at rest", func() bool {
		time.Sleep(500 * time.Millisecond)
		now := e.stats(t)
		if now.raft == before.raft {
			return true
		}
		before = now
		return false
	})
	time.Sleep(5 * time.Second) // a TTL: renewals from each
	if after := e.stats(t); after.rev != before.rev || after.raft != before.raft {
		t.Errorf("stable for 5 s: revision %d -> %d, raft index %d -> %d", before.rev, after.rev, before.raft, after.raft)
	}
	bcancel()
	if err := <-bdone; err != nil {
		t.Errorf("Run of b: %v", err)
	}
	waitFor(t, "a leads all six", func() bool { return len(a.Leading()) == 6 })
	acancel()
	if err := <-adone; err != nil {
		t.Errorf("Run of a: %v", err)
	}
	if n := e.keys(t, pfx+"/"); n != 0 {
		t.Errorf("keys left: %d", n)
	}
}
