//go:build go1.24

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/quietlock/quietlock/quietlocktest"
)

// binDir holds the binary the tests build, for the whole run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "quietlock-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

var (
	buildOnce sync.Once
	buildErr  error
)

// build compiles the command once per test run and returns its path.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "quietlock")
	buildOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", bin, "github.com/quietlock/quietlock/cmd/quietlock").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

// waitBound bounds every wait of the tests: generous, never a measurement.
const waitBound = 30 * time.Second

// proc is a running quietlock (or etcdctl) process.
type proc struct {
	name   string
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line; closed after the process has exited
	stderr *lockedBuffer
	done   chan struct{} // closed once the process has exited
}

// start starts bin with args and the extra environment env.
func start(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, lines: make(chan string, 10000), stderr: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = &lineWriter{ch: p.lines}
	p.cmd.Stderr = p.stderr
	// A command left running by a failed test may hold stdout open.
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		_ = p.cmd.Wait()
		close(p.lines)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// ql starts quietlock.
func ql(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return start(t, name, nil, build(t), args...)
}

// line returns the next line of stdout.
func (p *proc) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatalf("%s exited (%v) before printing a line; stderr: %q", p.name, p.cmd.ProcessState, p.stderr.String())
		}
		return l
	case <-time.After(waitBound):
		t.Fatalf("%s printed no line", p.name)
	}
	return ""
}

// await returns the next JSON event named want on stdout, skipping others.
func (p *proc) await(t *testing.T, want string) event {
	t.Helper()
	deadline := time.After(waitBound)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("%s exited (%v) before event %q; stderr: %q", p.name, p.cmd.ProcessState, want, p.stderr.String())
			}
			var ev event
			if json.Unmarshal([]byte(l), &ev) != nil {
				continue
			}
			if ev.Event == want {
				return ev
			}
		case <-deadline:
			t.Fatalf("%s: no event %q", p.name, want)
		}
	}
}

// signal sends sig to the process.
func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// exit waits for the process to exit and returns its exit code.
func (p *proc) exit(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(waitBound):
		t.Fatalf("%s did not exit", p.name)
		return 0
	}
}

// events drains the stdout of an exited process and returns its JSON
// events.
func (p *proc) events(t *testing.T) []event {
	t.Helper()
	p.exit(t)
	var evs []event
	for l := range p.lines {
		var ev event
		if json.Unmarshal([]byte(l), &ev) == nil {
			evs = append(evs, ev)
		}
	}
	return evs
}

// runQL runs quietlock to the end and returns its exit code, stdout and
// stderr.
func runQL(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	code, stdout, stderr, err := execQL(t.Context(), build(t), env, args...)
	if err != nil {
		t.Fatal(err)
	}
	return code, stdout, stderr
}

// execQL runs bin to the end, bounded by waitBound, and returns its exit
// code, stdout and stderr. It is safe to call from any goroutine.
func execQL(ctx context.Context, bin string, env []string, args ...string) (code int, stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, waitBound)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return 0, "", "", fmt.Errorf("%s %s did not exit in time", bin, strings.Join(args, " "))
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		return 0, "", "", err
	}
	return code, out.String(), errb.String(), nil
}

// lineWriter sends what is written to it to ch, line by line. Only the
// goroutine that copies a process's output writes to it.
type lineWriter struct {
	ch  chan<- string
	buf []byte
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		w.ch <- string(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// assertClean fails the test if anything is left in etcd: a key under
// name, or a lease.
func assertClean(t *testing.T, c *quietlocktest.Etcd, name string) {
	t.Helper()
	if keys := c.Keys(name + "/"); len(keys) != 0 {
		t.Errorf("keys left under %s/: %q", name, keys)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitBound)
	defer cancel()
	leases, err := c.Client.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(leases.Leases); n != 0 {
		t.Errorf("leases left: %d", n)
	}
}

// leaseOf returns the lease of a lock or election key, NAME/<lease in hex>.
func leaseOf(t *testing.T, key string) clientv3.LeaseID {
	t.Helper()
	id, err := strconv.ParseInt(key[strings.LastIndexByte(key, '/')+1:], 16, 64)
	if err != nil {
		t.Fatalf("key %q: %v", key, err)
	}
	return clientv3.LeaseID(id)
}

// assertRevoked fails the test unless the lease was revoked (or expired):
// etcd reports a TTL of -1 for a lease it no longer has.
func assertRevoked(t *testing.T, c *quietlocktest.Etcd, id clientv3.LeaseID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitBound)
	defer cancel()
	resp, err := c.Client.TimeToLive(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if resp.TTL != -1 {
		t.Errorf("lease %x: TTL %d, want -1 (revoked)", id, resp.TTL)
	}
}

// stamped is one line a test command wrote to its log file: what, who,
// and the command's own clock in nanoseconds.
type stamped struct {
	what, who string
	at        int64
}

// readLog reads a log of "what who nanoseconds" lines. It skips lines
// without a time: a `date` killed along with its command's group prints
// none.
func readLog(t *testing.T, path string) []stamped {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []stamped
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			continue
		}
		at, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, stamped{f[0], f[1], at})
	}
	return out
}

// readFile returns the content of the file at path.
func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fileHas reports whether the file at path contains s.
func fileHas(path, s string) bool {
	b, _ := os.ReadFile(path)
	return strings.Contains(string(b), s)
}
