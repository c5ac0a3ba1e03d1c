//go:build go1.24

package demotest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quietlock/quietlock/quietlocktest"
)

var (
	shardedOnce   sync.Once
	shardedBinary string
	shardedErr    error
)

// buildSharded compiles examples/sharded once per test run.
func buildSharded(t *testing.T) string {
	t.Helper()
	shardedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sharded-test")
		if err != nil {
			shardedErr = err
			return
		}
		shardedBinary = filepath.Join(dir, "sharded")
		out, err := exec.Command("go", "build", "-o", shardedBinary, "github.com/quietlock/quietlock/examples/sharded").CombinedOutput()
		if err != nil {
			shardedErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if shardedErr != nil {
		t.Fatal(shardedErr)
	}
	return shardedBinary
}

// shardedLine is one JSON line of the sharded demo's output, with the
// fields the tests read.
type shardedLine struct {
	Time         string              `json:"time"`
	Event        string              `json:"event"`
	Node         string              `json:"node"`
	Shard        string              `json:"shard"`
	From         string              `json:"from"`
	Token        int64               `json:"token"`
	Leaders      map[string][]string `json:"leaders"`
	Revision     int64               `json:"revision"`
	RaftIndex    int64               `json:"raft_index"`
	Settled      bool                `json:"settled"`
	Changes      int64               `json:"changes"`
	Writes       int64               `json:"writes"`
	Refused      int64               `json:"refused"`
	SinceSettled *struct {
		Revisions   int64 `json:"revisions"`
		RaftEntries int64 `json:"raft_entries"`
	} `json:"since_settled"`
	Keys *int64 `json:"keys"`
}

// demo is a running sharded demo whose stdout is read as JSON lines.
type demo struct {
	cmd    *exec.Cmd
	lines  chan shardedLine
	done   chan error // cmd.Wait's result, once every line is read
	stderr *lockedBuffer
}

func startSharded(t *testing.T, env []string, args ...string) *demo {
	t.Helper()
	cmd := exec.Command(buildSharded(t), append([]string{"--json"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d := &demo{cmd: cmd, lines: make(chan shardedLine, 10000), done: make(chan error, 1), stderr: &lockedBuffer{}}
	cmd.Stderr = d.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var l shardedLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Errorf("not a JSON line: %q: %v", sc.Text(), err)
				continue
			}
			if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil || l.Event == "" {
				t.Errorf("line without time or event: %q", sc.Text())
			}
			d.lines <- l
		}
		io.Copy(io.Discard, stdout)
		close(d.lines)
		d.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		for range d.lines {
		}
		<-d.done
	})
	return d
}

// next returns the next line, or fails the test once ctx ends or the demo
// exits.
func (d *demo) next(ctx context.Context, t *testing.T, waitingFor string) shardedLine {
	t.Helper()
	select {
	case l, ok := <-d.lines:
		if !ok {
			t.Fatalf("the demo exited while waiting for %s; stderr:\n%s", waitingFor, d.stderr)
		}
		return l
	case <-ctx.Done():
		t.Fatalf("no %s: %v; stderr:\n%s", waitingFor, ctx.Err(), d.stderr)
		return shardedLine{}
	}
}

// stop sends SIGINT and waits for the demo to exit (see [demo.wait]).
func (d *demo) stop(ctx context.Context, t *testing.T) ([]shardedLine, error) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	return d.wait(ctx, t)
}

// wait reads the rest of the output until the demo exits; it returns the
// lines and the exit status.
func (d *demo) wait(ctx context.Context, t *testing.T) ([]shardedLine, error) {
	t.Helper()
	var rest []shardedLine
	for {
		select {
		case l, ok := <-d.lines:
			if !ok {
				err := <-d.done
				d.done <- err // for the cleanup
				return rest, err
			}
			rest = append(rest, l)
		case <-ctx.Done():
			t.Fatalf("the demo did not exit; stderr:\n%s", d.stderr)
		}
	}
}

// lockedBuffer is a bytes.Buffer written by exec's copying goroutine and
// read by the test.
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

// ownership is the test's own model of the demo's shards, built from its
// join, leave, crash, lead and unled lines, to check each table it prints.
type ownership struct {
	t      *testing.T
	shards int
	live   map[string]bool
	owner  map[string]string
	token  map[string]int64
	terms  int
}

func (o *ownership) apply(l shardedLine) {
	t := o.t
	t.Helper()
	switch l.Event {
	case "join":
		o.live[l.Node] = true
	case "leave", "crash":
		delete(o.live, l.Node)
	case "lead":
		if cur := o.owner[l.Shard]; cur != "" {
			t.Errorf("%s: %s started leading while %s still led", l.Shard, l.Node, cur)
		}
		if l.Token <= o.token[l.Shard] {
			t.Errorf("%s: token %d after %d", l.Shard, l.Token, o.token[l.Shard])
		}
		o.owner[l.Shard], o.token[l.Shard] = l.Node, l.Token
		o.terms++
	case "unled":
		if o.owner[l.Shard] != l.Node {
			t.Errorf("%s: %s stopped leading, but the leader was %q", l.Shard, l.Node, o.owner[l.Shard])
		}
		delete(o.owner, l.Shard)
	case "overlap", "late-write":
		t.Errorf("unexpected %s line: %+v", l.Event, l)
	}
}

// checkBalanced checks a "leaders" table against the model: every shard
// led by a live node, each leading floor(N/M) or ceil(N/M), as the table
// says.
func (o *ownership) checkBalanced(l shardedLine) {
	t := o.t
	t.Helper()
	m := len(o.live)
	lo, hi := o.shards/m, (o.shards+m-1)/m
	want := map[string][]string{}
	for n := range o.live {
		want[n] = []string{}
	}
	for sh, n := range o.owner {
		if !o.live[n] {
			t.Errorf("%s led by %s, which is gone", sh, n)
		}
		want[n] = append(want[n], sh)
	}
	for n := range want {
		slices.Sort(want[n])
		if c := len(want[n]); c < lo || c > hi {
			t.Errorf("%s leads %d shards, want %d..%d (%d shards, %d nodes)", n, c, lo, hi, o.shards, m)
		}
	}
	if len(o.owner) != o.shards {
		t.Errorf("shards led: got %d, want %d", len(o.owner), o.shards)
	}
	if fmt.Sprint(l.Leaders) != fmt.Sprint(want) {
		t.Errorf("table: got %v, want %v", l.Leaders, want)
	}
}

// The embedded demo's script: 3 nodes share 7 shards, a fourth joins, the
// first leaves, the second crashes. After each event the leaders settle
// balanced (each node leads floor(7/M) or ceil(7/M)), no shard ever has
// two leaders, tokens grow, and while the leaders are settled etcd's
// revision and raft index do not move. SIGINT then stops it with status 0,
// no key left under the prefix and nothing left in the temp dir.
func TestShardedScript(t *testing.T) {
	const shards = 7
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	tmp := t.TempDir()
	d := startSharded(t, []string{"TMPDIR=" + tmp},
		"--shards", fmt.Sprint(shards), "--nodes", "3", "--ttl", "2s", "--step", "2s", "--status-every", "500ms")

	o := &ownership{t: t, shards: shards, live: map[string]bool{}, owner: map[string]string{}, token: map[string]int64{}}
	var (
		events   []string // join, leave, crash and leaders lines, in order
		prev     *shardedLine
		quiet    int // pairs of settled status lines with no change in between
		final    bool
		refused  int64
		afterEnd int // quiet pairs after the final table
	)
	for !final || afterEnd < 2 {
		l := d.next(ctx, t, "the final balanced table and two quiet status lines after it")
		o.apply(l)
		switch l.Event {
		case "join", "leave", "crash":
			events = append(events, l.Event+" "+l.Node)
		case "leaders":
			events = append(events, "leaders")
			o.checkBalanced(l)
		case "script-done":
			final = true
		case "status":
			refused = l.Refused
			if prev != nil && prev.Settled && l.Settled && prev.Changes == l.Changes && prev.Writes == l.Writes {
				quiet++
				if final {
					afterEnd++
				}
				if l.Revision != prev.Revision || l.RaftIndex != prev.RaftIndex {
					t.Errorf("leaders settled, yet etcd moved: revision %d -> %d, raft index %d -> %d",
						prev.Revision, l.Revision, prev.RaftIndex, l.RaftIndex)
				}
			}
			if l.Settled && (l.SinceSettled == nil || l.SinceSettled.Revisions != 0 || l.SinceSettled.RaftEntries != 0) {
				t.Errorf("settled status line with growth since the leaders settled: %+v", l.SinceSettled)
			}
			prev = &l
		}
	}
	want := []string{
		"join node-1", "join node-2", "join node-3", "leaders",
		"join node-4", "leaders",
		"leave node-1", "leaders",
		"crash node-2", "leaders",
	}
	// A table printed twice in a row (a node that stepped down and took
	// its shards back, on a loaded machine) is checked like the others.
	if events = slices.Compact(events); !slices.Equal(events, want) {
		t.Errorf("events:\n got %v\nwant %v", events, want)
	}
	if o.terms < shards+3 {
		t.Errorf("terms: got %d, want at least %d (one per shard, and moves)", o.terms, shards+3)
	}
	if refused == 0 {
		t.Error("no write with an ended term was refused")
	}
	t.Logf("%d terms, %d refused stale writes, %d quiet status pairs", o.terms, refused, quiet)

	rest, err := d.stop(ctx, t)
	if err != nil {
		t.Errorf("exit after SIGINT: %v, want status 0; stderr:\n%s", err, d.stderr)
	}
	var stopped *shardedLine
	for _, l := range rest {
		o.apply(l)
		if l.Event == "stopped" {
			stopped = &l
		}
	}
	switch {
	case stopped == nil:
		t.Error("no stopped line")
	case stopped.Keys == nil || *stopped.Keys != 0:
		t.Errorf("keys left under the prefix: %v, want 0", stopped.Keys)
	}
	if len(o.owner) != 0 {
		t.Errorf("still leading after SIGINT: %v", o.owner)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("left in the temp dir: %v", entries)
	}
}

// Two processes with --endpoints share 6 shards 3 and 3; when one exits on
// SIGTERM (status 0) the other leads all 6, at once.
func TestShardedEndpoints(t *testing.T) {
	const shards = 6
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := quietlocktest.New(t)
	args := func(name string) []string {
		return []string{"--endpoints", c.Endpoint, "--name", name, "--shards", fmt.Sprint(shards), "--ttl", "2s", "--status-every", "1s"}
	}
	// awaitTable reads d's lines until a table with want leaders per node.
	awaitTable := func(d *demo, want map[string]int) {
		t.Helper()
		for {
			l := d.next(ctx, t, fmt.Sprintf("a table with %v", want))
			if l.Event != "leaders" {
				continue
			}
			got := map[string]int{}
			for n, s := range l.Leaders {
				got[n] = len(s)
			}
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
		}
	}
	a := startSharded(t, nil, args("a")...)
	awaitTable(a, map[string]int{"a": shards})
	b := startSharded(t, nil, args("b")...)
	awaitTable(b, map[string]int{"a": shards / 2, "b": shards / 2})
	awaitTable(a, map[string]int{"a": shards / 2, "b": shards / 2})

	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	awaitTable(b, map[string]int{"b": shards})
	if _, err := a.wait(ctx, t); err != nil {
		t.Errorf("a after SIGTERM: %v, want status 0; stderr:\n%s", err, a.stderr)
	}
	if _, err := b.stop(ctx, t); err != nil {
		t.Errorf("b after SIGINT: %v, want status 0; stderr:\n%s", err, b.stderr)
	}
	if keys := c.Keys("/quietlock/sharded/"); len(keys) != 0 {
		t.Errorf("keys left: %v", keys)
	}
}

// Bad flags end with status 2 and one line on stderr.
func TestShardedFlags(t *testing.T) {
	bin := buildSharded(t)
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--shards", "0"}, "--shards"},
		{[]string{"--nodes", "0"}, "--nodes"},
		{[]string{"--ttl", "1500ms"}, "--ttl"},
		{[]string{"--step", "0s"}, "--step"},
		{[]string{"--duration", "-1s"}, "--duration"},
		{[]string{"extra"}, "unexpected argument"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 2 {
				t.Fatalf("exit: got %v, want status 2", err)
			}
			if msg := strings.TrimSpace(stderr.String()); strings.Contains(msg, "\n") || !strings.Contains(msg, tc.msg) {
				t.Errorf("stderr: got %q, want one line with %q", msg, tc.msg)
			}
			if len(out) != 0 {
				t.Errorf("stdout: %q", out)
			}
		})
	}
}
