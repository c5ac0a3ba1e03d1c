//go:build go1.24

package demotest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quietlock/quietlock/quietlocktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// build compiles the command once per test run.
func build(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "primary-standby-test")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "primary-standby")
		out, err := exec.Command("go", "build", "-o", binary, "github.com/quietlock/quietlock/examples/primary-standby").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// line is one JSON line of output, with the fields the tests read.
type line struct {
	Time      string `json:"time"`
	Event     string `json:"event"`
	Node      string `json:"node"`
	Token     int64  `json:"token"`
	Leader    string `json:"leader"`
	Reason    string `json:"reason"`
	Revision  int64  `json:"revision"`
	RaftIndex int64  `json:"raft_index"`
	Counter   *int64 `json:"counter"`
	Addr      string `json:"addr"`
}

// parse reads every stdout line as JSON with the required fields.
func parse(t *testing.T, r io.Reader, each func(line)) {
	t.Helper()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Errorf("not a JSON line: %q: %v", sc.Text(), err)
			continue
		}
		if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil || l.Event == "" || l.Node == "" {
			t.Errorf("line without time, event or node: %q", sc.Text())
		}
		each(l)
	}
}

// The embedded demo: never two primaries at once, failovers happen, and
// while roles are stable the store grows by the primary's work writes only.
func TestEmbedded(t *testing.T) {
	bin := build(t)
	tmp := t.TempDir()
	cmd := exec.Command(bin, "--duration", "22s", "--json", "--failover-every", "7s", "--work-every", "250ms", "--ttl", "2s")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("exit: %v\nstderr:\n%s", err, stderr.String())
	}

	var (
		primary      string // node currently primary, "" if none
		tokens       = map[int64]bool{}
		statuses     []line
		roleChanged  []bool // per status: a role changed since the previous one
		changed      bool
		stale, stats int
	)
	parse(t, bytes.NewReader(out), func(l line) {
		switch l.Event {
		case "primary":
			if primary != "" {
				t.Errorf("%s became primary while %s still was", l.Node, primary)
			}
			primary, tokens[l.Token], changed = l.Node, true, true
		case "stepped-down":
			if l.Node != primary {
				t.Errorf("%s stepped down, but the primary was %q", l.Node, primary)
			}
			primary, changed = "", true
		case "stale-write-refused":
			stale++
		case "status":
			stats++
			statuses = append(statuses, l)
			roleChanged = append(roleChanged, changed)
			changed = false
		}
	})
	if len(tokens) < 3 {
		t.Errorf("terms: got %d, want at least 3 (failovers every 7 s over 22 s)", len(tokens))
	}
	if stale == 0 {
		t.Error("no stale write was refused")
	}
	quiet := 0
	for i := 1; i < len(statuses); i++ {
		if roleChanged[i] {
			continue
		}
		quiet++
		a, b := statuses[i-1], statuses[i]
		if got, want := b.Revision-a.Revision, *b.Counter-*a.Counter; got != want {
			t.Errorf("between status lines with stable roles: revisions +%d, work writes +%d", got, want)
		}
	}
	if stats < 3 || quiet == 0 {
		t.Errorf("status lines: %d, with stable roles in between: %d", stats, quiet)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("left in the temp dir: %v", entries)
	}
}

// With no work, nothing at all is written while roles are stable.
func TestEmbeddedQuiet(t *testing.T) {
	bin := build(t)
	out, err := exec.Command(bin, "--duration", "13s", "--json", "--failover-every", "0", "--work-every", "0", "--nodes", "5").Output()
	if err != nil {
		t.Fatal(err)
	}
	var statuses []line
	parse(t, bytes.NewReader(out), func(l line) {
		if l.Event == "status" {
			statuses = append(statuses, l)
		}
	})
	if len(statuses) < 2 {
		t.Fatalf("status lines: got %d, want 2", len(statuses))
	}
	a, b := statuses[0], statuses[len(statuses)-1]
	if b.Revision != a.Revision || b.RaftIndex != a.RaftIndex {
		t.Errorf("4 standbys waiting wrote: revision %d -> %d, raft index %d -> %d", a.Revision, b.Revision, a.RaftIndex, b.RaftIndex)
	}
}

// process is one node started with --endpoints.
type process struct {
	name  string
	cmd   *exec.Cmd
	lines chan line
	done  chan error
}

func startProcess(t *testing.T, bin, endpoint, name string) *process {
	t.Helper()
	cmd := exec.Command(bin, "--endpoints", endpoint, "--name", name, "--ttl", "2s", "--json", "--work-every", "500ms")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{name: name, cmd: cmd, lines: make(chan line, 1000), done: make(chan error, 1)}
	go func() {
		parse(t, stdout, func(l line) { p.lines <- l })
		close(p.lines)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	return p
}

// awaitPrimary returns the process among ps that reports becoming primary
// next.
func awaitPrimary(t *testing.T, ps []*process) *process {
	t.Helper()
	found := make(chan *process, len(ps))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case l, ok := <-p.lines:
					if !ok {
						return
					}
					if l.Event == "primary" {
						found <- p
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	select {
	case p := <-found:
		cancel()
		wg.Wait()
		return p
	case <-ctx.Done():
		wg.Wait()
		t.Fatal("no process became primary")
		return nil
	}
}

func without(ps []*process, p *process) []*process {
	var out []*process
	for _, q := range ps {
		if q != p {
			out = append(out, q)
		}
	}
	return out
}

// Three processes against one etcd: SIGTERM on the primary hands over at
// once and exits 0; SIGKILL on the next hands over when its lease expires.
func TestEndpoints(t *testing.T) {
	bin := build(t)
	c := quietlocktest.New(t)
	var ps []*process
	for i := range 3 {
		ps = append(ps, startProcess(t, bin, c.Endpoint, fmt.Sprintf("p%d", i+1)))
	}
	first := awaitPrimary(t, ps)
	rest := without(ps, first)

	if err := first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	second := awaitPrimary(t, rest)
	if err := <-first.done; err != nil {
		t.Errorf("%s after SIGTERM: %v, want exit 0", first.name, err)
	}
	first.done <- nil

	if err := second.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	third := awaitPrimary(t, without(rest, second))
	t.Logf("primaries: %s, then %s (after SIGTERM), then %s (after SIGKILL)", first.name, second.name, third.name)
	if err := third.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := <-third.done; err != nil {
		t.Errorf("%s after SIGINT: %v, want exit 0", third.name, err)
	}
	third.done <- nil
	quietlocktest.WaitFor(t, "the killed primary's key to expire", func() bool {
		return len(c.Keys("/quietlock/primary-standby/")) == 0
	})
}

// Bad flags and an unreachable etcd end with a non-zero status and one line
// on stderr.
func TestErrors(t *testing.T) {
	bin := build(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
		{[]string{"--nodes", "0"}, 2, "--nodes"},
		{[]string{"--ttl", "500ms"}, 2, "--ttl"},
		{[]string{"--duration", "-1s"}, 2, "negative"},
		{[]string{"--prefix", ""}, 2, "--prefix"},
		{[]string{"extra"}, 2, "unexpected argument"},
		{[]string{"--endpoints", closedPort}, 1, "unreachable"},
		{[]string{"--http", "127.0.0.1:99999"}, 1, "--http"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			exit, ok := err.(*exec.ExitError)
			if !ok || exit.ExitCode() != tc.code {
				t.Fatalf("exit: got %v, want status %d", err, tc.code)
			}
			msg := strings.TrimSpace(stderr.String())
			if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, tc.msg) {
				t.Errorf("stderr: got %q, want one line with %q", msg, tc.msg)
			}
			if len(out) != 0 {
				t.Errorf("stdout: %q", out)
			}
		})
	}
}

// With --http, the demo serves /readyz (200 on the primary only), /healthz
// (200 on every node in touch with etcd) and /metrics (every node's,
// labelled with its name), as its package comment documents: in embedded
// mode, /readyz and /healthz are node-1's, and every node has its own under
// /node-N/.
func TestHTTP(t *testing.T) {
	bin := build(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "--json", "--nodes", "2", "--ttl", "2s", "--failover-every", "0", "--work-every", "0", "--duration", "2m", "--http", addr)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines, done := make(chan line, 1000), make(chan error, 1)
	go func() {
		parse(t, stdout, func(l line) { lines <- l })
		close(lines)
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})

	var primary, served string
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for primary == "" || served == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("demo exited early; stderr:\n%s", stderr.String())
			}
			switch l.Event {
			case "primary":
				primary = l.Node
			case "http":
				served = l.Addr
				if l.Node != "all" {
					t.Errorf("http line's node: got %q, want all", l.Node)
				}
			}
		case <-ctx.Done():
			t.Fatalf("no primary and http lines; stderr:\n%s", stderr.String())
		}
	}
	if served != addr {
		t.Errorf("serving on %s, want %s", served, addr)
	}
	standby := map[string]string{"node-1": "node-2", "node-2": "node-1"}[primary]

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp.StatusCode, string(b)
	}
	type state struct {
		Status  string `json:"status"`
		Leading bool   `json:"leading"`
		Leader  string `json:"leader"`
		Token   int64  `json:"token"`
		Healthy bool   `json:"healthy"`
	}
	check := func(path string, wantCode int) state {
		t.Helper()
		code, body := get(path)
		var s state
		if err := json.Unmarshal([]byte(body), &s); err != nil || strings.Count(body, "\n") != 1 {
			t.Errorf("GET %s: body %q is not one line of JSON: %v", path, body, err)
		}
		if code != wantCode {
			t.Errorf("GET %s: got %d %s, want %d", path, code, body, wantCode)
		}
		return s
	}

	quietlocktest.WaitFor(t, "both nodes to know the primary", func() bool {
		var a, b state
		_, body := get("/node-1/healthz")
		json.Unmarshal([]byte(body), &a)
		_, body = get("/node-2/healthz")
		json.Unmarshal([]byte(body), &b)
		return a.Leader == primary && b.Leader == primary
	})
	for _, n := range []string{"node-1", "node-2"} {
		if s := check("/"+n+"/healthz", http.StatusOK); !s.Healthy || s.Status != "ok" {
			t.Errorf("%s's health: %+v", n, s)
		}
	}
	if s := check("/"+primary+"/readyz", http.StatusOK); !s.Leading || s.Token <= 0 {
		t.Errorf("primary's readiness: %+v, want leading with a token", s)
	}
	if s := check("/"+standby+"/readyz", http.StatusServiceUnavailable); s.Leading || s.Token != 0 || s.Status != "not ready" {
		t.Errorf("standby's readiness: %+v, want not ready, token 0", s)
	}
	wantReady := http.StatusServiceUnavailable
	if primary == "node-1" {
		wantReady = http.StatusOK
	}
	check("/readyz", wantReady)
	check("/healthz", http.StatusOK)

	code, metrics := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	isLeader := map[string]string{}
	for _, l := range strings.Split(metrics, "\n") {
		if rest, ok := strings.CutPrefix(l, `quietlock_elect_is_leader{node="`); ok {
			node, labelsAndValue, _ := strings.Cut(rest, `"`)
			_, value, _ := strings.Cut(labelsAndValue, "} ")
			isLeader[node] = value
		}
	}
	if want := map[string]string{primary: "1", standby: "0"}; fmt.Sprint(isLeader) != fmt.Sprint(want) {
		t.Errorf("quietlock_elect_is_leader by node: got %v, want %v\n%s", isLeader, want, metrics)
	}
	if code, _ := get("/nowhere"); code != http.StatusNotFound {
		t.Errorf("GET /nowhere: got %d, want 404", code)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := <-done; err != nil {
		t.Errorf("after SIGTERM: %v, want exit 0; stderr:\n%s", err, stderr.String())
	}
	done <- nil
}
