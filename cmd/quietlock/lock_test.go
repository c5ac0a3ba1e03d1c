//go:build go1.24

package main

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quietlock/quietlock/quietlocktest"
)

// Two processes that each run a command three times under one lock never
// run it at the same time: in the file the commands append to, each start
// follows the previous end, by the file's order and by the commands' own
// clocks.
func TestLockExcludes(t *testing.T) {
	c := quietlocktest.New(t)
	bin := build(t)
	const name, runs = "/test/excludes", 3
	log := filepath.Join(t.TempDir(), "log")
	script := `echo "start $2 $(date +%s%N)" >> "$1"; sleep 0.2; echo "end $2 $(date +%s%N)" >> "$1"`

	var wg sync.WaitGroup
	for _, who := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range runs {
				code, _, stderr, err := execQL(t.Context(), bin, nil, "lock", "--endpoints", c.Endpoint, name, "sh", "-c", script, "sh", log, who)
				if err != nil || code != 0 {
					t.Errorf("%s: exit %d, %v; stderr %q", who, code, err, stderr)
				}
			}
		}()
	}
	wg.Wait()

	entries := readLog(t, log)
	if got, want := len(entries), 2*2*runs; got != want {
		t.Fatalf("log lines: got %d, want %d: %v", got, want, entries)
	}
	perWho := map[string]int{}
	for i := 0; i < len(entries); i += 2 {
		s, e := entries[i], entries[i+1]
		if s.what != "start" || e.what != "end" || s.who != e.who {
			t.Errorf("lines %d-%d: %v, %v: not one command's start and end", i, i+1, s, e)
		}
		if i > 0 && s.at < entries[i-1].at {
			t.Errorf("%s started at %d, before %s ended at %d", s.who, s.at, entries[i-1].who, entries[i-1].at)
		}
		perWho[s.who]++
	}
	if perWho["a"] != runs || perWho["b"] != runs {
		t.Errorf("runs: %v, want %d each", perWho, runs)
	}
	assertClean(t, c, name)
}

// A process waiting for the lock writes nothing: the store revision and the
// raft index stay where they were for 5 s, and the only key is the holder's.
// The holder prints the key as etcdctl lock does, and releases the lock on
// SIGTERM; the waiter then runs its command.
func TestLockWaiterWritesNothing(t *testing.T) {
	c := quietlocktest.New(t)
	const name = "/test/waiter"
	holder := ql(t, "holder", "lock", "--endpoints", c.Endpoint, name)
	key := holder.line(t)
	if !strings.HasPrefix(key, name+"/") {
		t.Fatalf("holder printed %q, want the held key", key)
	}
	if v := holder.line(t); v != "" {
		t.Errorf("holder printed %q after the key, want the empty value", v)
	}

	waiter := ql(t, "waiter", "lock", "--json", "--endpoints", c.Endpoint, name, "--", "true")
	waiter.await(t, "waiting")
	before := c.Stats()
	time.Sleep(5 * time.Second)
	after := c.Stats()
	if after.Revision != before.Revision || after.RaftIndex != before.RaftIndex {
		t.Errorf("while waiting: revision %d -> %d, raft index %d -> %d, want no change",
			before.Revision, after.Revision, before.RaftIndex, after.RaftIndex)
	}
	if keys := c.Keys(name + "/"); len(keys) != 1 || keys[0] != key {
		t.Errorf("keys: %q, want only the holder's %q", keys, key)
	}

	holder.signal(t, syscall.SIGTERM)
	if code := holder.exit(t); code != 0 {
		t.Errorf("holder after SIGTERM: exit %d, want 0; stderr %q", code, holder.stderr.String())
	}
	if code := waiter.exit(t); code != 0 {
		t.Errorf("waiter: exit %d, want 0; stderr %q", code, waiter.stderr.String())
	}
	assertClean(t, c, name)
}

// --try on a held lock exits 3 having written nothing, not even a lease,
// and prints nothing (cron would mail it); --timeout exits 4 and leaves
// nothing behind.
func TestLockTryAndTimeout(t *testing.T) {
	c := quietlocktest.New(t)
	const name = "/test/try"
	holder := ql(t, "holder", "lock", "--json", "--endpoints", c.Endpoint, name)
	key := holder.await(t, "acquired").Key

	before := c.Stats()
	code, stdout, stderr := runQL(t, nil, "lock", "--try", "--endpoints", c.Endpoint, name, "--", "true")
	if code != exitHeld || stdout != "" || stderr != "" {
		t.Errorf("--try on a held lock: exit %d, stdout %q, stderr %q; want %d and no output", code, stdout, stderr, exitHeld)
	}
	code, stdout, _ = runQL(t, nil, "lock", "--try", "--json", "--endpoints", c.Endpoint, name)
	if code != exitHeld || !strings.Contains(stdout, `"event":"held"`) || !strings.Contains(stdout, key) {
		t.Errorf("--try --json on a held lock: exit %d, stdout %q; want %d and a held event naming %s", code, stdout, exitHeld, key)
	}
	after := c.Stats()
	if after.Revision != before.Revision || after.RaftIndex != before.RaftIndex {
		t.Errorf("two --try: revision %d -> %d, raft index %d -> %d, want no change",
			before.Revision, after.Revision, before.RaftIndex, after.RaftIndex)
	}

	code, stdout, stderr = runQL(t, nil, "lock", "--timeout", "1s", "--endpoints", c.Endpoint, name, "--", "true")
	if code != exitTimeout || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "not acquired") {
		t.Errorf("--timeout on a held lock: exit %d, stdout %q, stderr %q; want %d and one line", code, stdout, stderr, exitTimeout)
	}
	if keys := c.Keys(name + "/"); len(keys) != 1 {
		t.Errorf("keys after the timeout: %q, want only the holder's", keys)
	}

	holder.signal(t, syscall.SIGINT)
	if code := holder.exit(t); code != 0 {
		t.Errorf("holder after SIGINT: exit %d, want 0", code)
	}
	if code, _, stderr := runQL(t, nil, "lock", "--try", "--endpoints", c.Endpoint, name, "--", "true"); code != 0 {
		t.Errorf("--try on a free lock: exit %d, want 0; stderr %q", code, stderr)
	}
	assertClean(t, c, name)
}

// SIGTERM on a holder reaches its command, which exits; the holder then
// releases the lock and revokes its lease, so the waiting process takes
// over at once: the holder's lease (TTL 60 s) is gone because it was
// revoked, not because it expired.
func TestLockSignalHandsOver(t *testing.T) {
	c := quietlocktest.New(t)
	const name = "/test/handover"
	log := filepath.Join(t.TempDir(), "log")
	holder := ql(t, "holder", "lock", "--json", "--ttl", "60", "--endpoints", c.Endpoint, name, "sh", "-c",
		`trap 'echo got TERM >> "$1"; exit 0' TERM; echo started >> "$1"; while :; do sleep 0.05; done`, "sh", log)
	key := holder.await(t, "acquired").Key
	quietlocktest.WaitFor(t, "the holder's command to start", func() bool { return fileHas(log, "started") })

	waiter := ql(t, "waiter", "lock", "--json", "--ttl", "60", "--endpoints", c.Endpoint, name, "sh", "-c", `echo took over >> "$1"`, "sh", log)
	waiter.await(t, "waiting")

	holder.signal(t, syscall.SIGTERM)
	if code := holder.exit(t); code != 0 {
		t.Errorf("holder: exit %d, want its command's 0; stderr %q", code, holder.stderr.String())
	}
	if code := waiter.exit(t); code != 0 {
		t.Errorf("waiter: exit %d, want 0; stderr %q", code, waiter.stderr.String())
	}
	if b := readFile(t, log); b != "started\ngot TERM\ntook over\n" {
		t.Errorf("log: %q, want the holder's command to get SIGTERM and exit before the waiter's runs", b)
	}
	assertRevoked(t, c, leaseOf(t, key))
	var forwarded, released bool
	for _, ev := range holder.events(t) {
		forwarded = forwarded || ev.Event == "signal" && ev.Signal == "SIGTERM" && ev.PID != 0
		released = released || ev.Event == "released" && ev.Key == key
	}
	if !forwarded || !released {
		t.Errorf("holder's events: SIGTERM forwarded %v, lock released %v; want both", forwarded, released)
	}
	assertClean(t, c, name)
}

// When the held key is deleted behind the holder's back, the command's
// group gets SIGTERM, then SIGKILL after --kill-grace (this one ignores
// SIGTERM), and quietlock exits 5.
func TestLockLost(t *testing.T) {
	c := quietlocktest.New(t)
	const name = "/test/lost"
	log := filepath.Join(t.TempDir(), "log")
	holder := ql(t, "holder", "lock", "--json", "--kill-grace", "200ms", "--endpoints", c.Endpoint, name, "sh", "-c",
		`trap '' TERM; echo started >> "$1"; while :; do sleep 0.05; done`, "sh", log)
	key := holder.await(t, "acquired").Key
	quietlocktest.WaitFor(t, "the command to start", func() bool { return fileHas(log, "started") })

	ctx, cancel := context.WithTimeout(t.Context(), waitBound)
	defer cancel()
	if _, err := c.Client.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	ev := holder.await(t, "lost")
	if !strings.Contains(ev.Reason, "key deleted") {
		t.Errorf("lost: reason %q, want the key's deletion", ev.Reason)
	}
	ev = holder.await(t, "exited")
	if ev.ExitCode == nil || *ev.ExitCode != 128+int(syscall.SIGKILL) || ev.Signal != "SIGKILL" {
		t.Errorf("command: %+v, want killed by SIGKILL", ev)
	}
	if code := holder.exit(t); code != exitLost {
		t.Errorf("holder: exit %d, want %d", code, exitLost)
	}
	assertClean(t, c, name)
}

// The command's exit code is passed on, as 128+N when it died of signal N.
func TestExitCodes(t *testing.T) {
	c := quietlocktest.New(t)
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"lock", "/test/code", "sh", "-c", "exit 7"}, 7},
		{[]string{"lock", "/test/code", "--", "sh", "-c", "kill -TERM $$"}, 128 + int(syscall.SIGTERM)},
		{[]string{"elect", "/test/code", "p", "--", "sh", "-c", "exit 7"}, 7},
	} {
		args := append([]string{tc.args[0], "--endpoints", c.Endpoint}, tc.args[1:]...)
		if code, _, stderr := runQL(t, nil, args...); code != tc.want {
			t.Errorf("quietlock %s: exit %d, want %d; stderr %q", strings.Join(tc.args, " "), code, tc.want, stderr)
		}
	}
	assertClean(t, c, "/test/code")
}
