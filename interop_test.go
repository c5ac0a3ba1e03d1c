//go:build go1.24

package quietlock_test

import (
	"bufio"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/internal/watchwait"
	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

// interopCluster is the server the etcdctl tests run against: Debian's etcd
// (3.4) when it is installed, else the embedded one.
func interopCluster(t *testing.T) *quietlocktest.Etcd {
	t.Helper()
	if _, err := exec.LookPath(quietlocktest.DebianEtcd); err == nil {
		return quietlocktest.NewExternal(t, quietlocktest.DebianEtcd)
	}
	return quietlocktest.New(t)
}

// etcdctl is a running etcdctl command whose output lines can be awaited.
type etcdctl struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan error
}

func startEtcdctl(t *testing.T, endpoint string, args ...string) *etcdctl {
	t.Helper()
	bin := quietlocktest.Binary(t, quietlocktest.DebianEtcdctl, "etcd-client")
	cmd := exec.Command(bin, append([]string{"--endpoints", endpoint}, args...)...)
	cmd.Env = append(cmd.Environ(), "ETCDCTL_API=3")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := &etcdctl{cmd: cmd, lines: make(chan string, 100), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			e.lines <- sc.Text()
		}
		io.Copy(io.Discard, out)
		close(e.lines)
		e.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-e.done
		e.done <- nil
	})
	return e
}

// await waits for an output line containing s.
func (e *etcdctl) await(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-e.lines:
			if !ok {
				t.Fatalf("etcdctl exited before printing %q", s)
			}
			if strings.Contains(l, s) {
				return
			}
		case <-timeout:
			t.Fatalf("etcdctl did not print %q", s)
		}
	}
}

// interrupt stops etcdctl as Ctrl-C would (it then releases what it holds)
// and waits for it to exit.
func (e *etcdctl) interrupt(t *testing.T) {
	t.Helper()
	if err := e.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.done:
		e.done <- nil
	case <-time.After(30 * time.Second):
		t.Fatal("etcdctl did not exit on SIGINT")
	}
}

// `etcdctl lock` and our Mutex exclude each other, both ways.
func TestEtcdctlLock(t *testing.T) {
	c := interopCluster(t)
	const name = "/quietlock/test/etcdctl-lock"
	m := lock.NewMutex(quietlocktest.NewSession(t, c.NewClient(), ttl), name)

	held := startEtcdctl(t, c.Endpoint, "lock", name)
	held.await(t, name+"/") // etcdctl prints its key once it holds the lock
	if err := m.TryLock(t.Context()); err != concurrency.ErrLocked {
		t.Fatalf("TryLock while etcdctl holds: got %v, want %v", err, concurrency.ErrLocked)
	}
	base := c.Stats()
	results, _ := lockAll(t, []*lock.Mutex{m})
	quietlocktest.WaitFor(t, "our waiter", func() bool { return watchwait.Waiters() == 1 })
	if st := c.Stats(); st.Revision != base.Revision {
		t.Errorf("our waiter wrote: revision %d -> %d", base.Revision, st.Revision)
	}
	held.interrupt(t)
	if r := <-results; r.err != nil {
		t.Fatalf("Lock after etcdctl released: %v", r.err)
	}

	waiting := startEtcdctl(t, c.Endpoint, "lock", name)
	quietlocktest.WaitFor(t, "etcdctl's queued key", func() bool { return len(c.Keys(name+"/")) == 2 })
	select {
	case l := <-waiting.lines:
		t.Fatalf("etcdctl took the lock while we held it: %q", l)
	case <-time.After(200 * time.Millisecond):
	}
	unlockOrFatal(t, m)
	waiting.await(t, name+"/")
	waiting.interrupt(t)
	quietlocktest.WaitFor(t, "no keys left", func() bool { return len(c.Keys(name+"/")) == 0 })
}

// `etcdctl elect` and `etcdctl elect -l` interoperate with our Election,
// both ways.
func TestEtcdctlElect(t *testing.T) {
	c := interopCluster(t)
	const name = "/quietlock/test/etcdctl-elect"
	e := elect.NewElection(quietlocktest.NewSession(t, c.NewClient(), ttl), name)
	observer := startEtcdctl(t, c.Endpoint, "elect", "-l", name)

	theirs := startEtcdctl(t, c.Endpoint, "elect", name, "etcdctl-proposal")
	theirs.await(t, "etcdctl-proposal")
	observer.await(t, "etcdctl-proposal")
	resp, err := e.Leader(t.Context())
	if err != nil || string(resp.Kvs[0].Value) != "etcdctl-proposal" {
		t.Fatalf("our Leader while etcdctl leads: %v, %v", resp, err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Campaign(t.Context(), "our-proposal") }()
	quietlocktest.WaitFor(t, "our candidate", func() bool { return watchwait.Waiters() == 1 })
	if got := c.Keys(name + "/"); len(got) != 1 {
		t.Errorf("keys while our candidate waits: %q, want etcdctl's only", got)
	}
	theirs.interrupt(t)
	if err := <-done; err != nil {
		t.Fatalf("our Campaign: %v", err)
	}
	observer.await(t, "our-proposal")

	// etcdctl campaigns behind us, and is elected when we resign.
	again := startEtcdctl(t, c.Endpoint, "elect", name, "etcdctl-again")
	quietlocktest.WaitFor(t, "etcdctl's queued key", func() bool { return len(c.Keys(name+"/")) == 2 })
	obs := e.Observe(t.Context())
	if r := <-obs; string(r.Kvs[0].Value) != "our-proposal" {
		t.Errorf("our Observe: got %q, want our-proposal", r.Kvs[0].Value)
	}
	if err := e.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	again.await(t, "etcdctl-again")
	observer.await(t, "etcdctl-again")
	for r := range obs {
		if string(r.Kvs[0].Value) == "etcdctl-again" {
			break
		}
	}
	again.interrupt(t)
	observer.interrupt(t)
	quietlocktest.WaitFor(t, "no keys left", func() bool { return len(c.Keys(name+"/")) == 0 })
}
