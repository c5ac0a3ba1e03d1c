//go:build go1.24

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/quietlock/quietlock/quietlocktest"
)

// worker is a command for the election tests: it logs "start", then a
// "beat" every 50 ms, each with its name and its own clock, until it is
// killed. On SIGTERM it logs "term"; a polite worker then exits 0, a
// stubborn one carries on until SIGKILL.
const worker = `log=$1 who=$2 mode=$3
echo "start $who $(date +%s%N)" >> "$log"
if [ "$mode" = stubborn ]; then
	trap 'echo "term $who $(date +%s%N)" >> "$log"' TERM
else
	trap 'echo "term $who $(date +%s%N)" >> "$log"; exit 0' TERM
fi
while :; do
	echo "beat $who $(date +%s%N)" >> "$log"
	sleep 0.05
done
`

// A leader cut off from etcd (its traffic black-holed) ends its term before
// etcd can expire its lease, and its command, which ignores SIGTERM, is
// killed before the standby, once elected, starts its own: by the commands'
// own clocks, the old command's last line precedes the new one's first.
func TestElectPartitionedLeaderStopsFirst(t *testing.T) {
	c := quietlocktest.New(t)
	proxy := quietlocktest.NewProxy(t, c.Endpoint)
	const name = "/test/partition"
	dir := t.TempDir()
	script, log := filepath.Join(dir, "worker.sh"), filepath.Join(dir, "log")
	if err := os.WriteFile(script, []byte(worker), 0o644); err != nil {
		t.Fatal(err)
	}
	timing := []string{"--json", "--ttl", "3s", "--safety-margin", "1s", "--kill-grace", "500ms"}
	elect := func(who, endpoint, mode string) *proc {
		args := append(append([]string{"elect", "--endpoints", endpoint}, timing...), name, who, "--", "sh", script, log, who, mode)
		return ql(t, who, args...)
	}

	leader := elect("L", proxy.Endpoint(), "stubborn")
	leader.await(t, "started")
	quietlocktest.WaitFor(t, "L's command to start", func() bool { return fileHas(log, "start L") })
	standby := elect("S", c.Endpoint, "polite")
	if ev := standby.await(t, "leader"); ev.Leader == nil || *ev.Leader != "L" {
		t.Fatalf("standby sees leader %v, want L", ev.Leader)
	}

	proxy.Blackhole()
	ev := leader.await(t, "stepped-down")
	if !strings.Contains(ev.Reason, "lease deadline") {
		t.Errorf("leader stepped down because %q, want its lease deadline", ev.Reason)
	}
	standby.await(t, "started")
	quietlocktest.WaitFor(t, "S's command to start", func() bool { return fileHas(log, "start S") })
	proxy.Heal()

	entries := readLog(t, log)
	var lastL, startS int64
	starts := map[string]int{}
	terms := 0
	for _, e := range entries {
		switch {
		case e.what == "start":
			starts[e.who]++
			if e.who == "S" {
				startS = e.at
			}
		case e.who == "L" && e.what == "term":
			terms++
		}
		if e.who == "L" {
			lastL = max(lastL, e.at)
		}
	}
	if starts["L"] != 1 || starts["S"] != 1 {
		t.Errorf("command starts: %v, want one each", starts)
	}
	if terms == 0 {
		t.Error("L's command got no SIGTERM")
	}
	if lastL >= startS {
		t.Errorf("L's command last wrote at %d, after S's started at %d", lastL, startS)
	} else {
		t.Logf("L's command was silent %.3f s before S's started", float64(startS-lastL)/1e9)
	}

	leader.signal(t, syscall.SIGTERM)
	if code := leader.exit(t); code != 0 {
		t.Errorf("old leader, a standby, after SIGTERM: exit %d, want 0; stderr %q", code, leader.stderr.String())
	}
	var killed bool
	for _, ev := range leader.events(t) {
		killed = killed || ev.Event == "exited" && ev.Signal == "SIGKILL"
	}
	if !killed {
		t.Error("L's command was not killed with SIGKILL after --kill-grace")
	}
	standby.signal(t, syscall.SIGTERM)
	if code := standby.exit(t); code != 0 {
		t.Errorf("new leader after SIGTERM: exit %d, want its command's 0; stderr %q", code, standby.stderr.String())
	}
	if !fileHas(log, "term S") {
		t.Error("SIGTERM was not forwarded to S's command")
	}
	// The old leader's first lease expired in etcd, on etcd's schedule.
	quietlocktest.WaitFor(t, "the old leader's lease to expire", func() bool {
		resp, err := c.Client.Leases(t.Context())
		return err == nil && len(resp.Leases) == 0
	})
	assertClean(t, c, name)
}

// When the leader's command exits by itself, quietlock resigns at once and
// exits with the command's code; the standby takes over without waiting for
// the lease (TTL 60 s) to expire: the old lease was revoked.
func TestElectCommandExitHandsOver(t *testing.T) {
	c := quietlocktest.New(t)
	const name = "/test/exit"
	dir := t.TempDir()
	ready, log := filepath.Join(dir, "ready"), filepath.Join(dir, "log")
	leader := ql(t, "L", "elect", "--json", "--ttl", "60", "--endpoints", c.Endpoint, name, "L", "--", "sh", "-c",
		`while [ ! -e "$1" ]; do sleep 0.05; done; echo L >> "$2"; exit 3`, "sh", ready, log)
	key := leader.await(t, "elected").Key
	standby := ql(t, "S", "elect", "--json", "--ttl", "60", "--endpoints", c.Endpoint, name, "S", "--", "sh", "-c",
		`echo S >> "$1"`, "sh", log)
	standby.await(t, "leader")

	if err := os.WriteFile(ready, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := leader.exit(t); code != 3 {
		t.Errorf("leader: exit %d, want its command's 3; stderr %q", code, leader.stderr.String())
	}
	if code := standby.exit(t); code != 0 {
		t.Errorf("standby: exit %d, want its command's 0; stderr %q", code, standby.stderr.String())
	}
	if got := readFile(t, log); got != "L\nS\n" {
		t.Errorf("log %q, want L then S", got)
	}
	assertRevoked(t, c, leaseOf(t, key))
	assertClean(t, c, name)
}

// elect -l prints each new leader's key and value, as etcdctl elect -l
// does, and a leader prints its key and proposal, as etcdctl elect does.
func TestElectListen(t *testing.T) {
	c := quietlocktest.New(t)
	const name = "/test/listen"
	listener := ql(t, "listener", "elect", "-l", "--endpoints", c.Endpoint, name)
	for _, p := range []string{"one", "two"} {
		leader := ql(t, p, "elect", "--endpoints", c.Endpoint, name, p)
		key, value := leader.line(t), leader.line(t)
		if !strings.HasPrefix(key, name+"/") || value != p {
			t.Errorf("leader printed %q, %q; want its key and %q", key, value, p)
		}
		if k, v := listener.line(t), listener.line(t); k != key || v != p {
			t.Errorf("listener printed %q, %q; want %q, %q", k, v, key, p)
		}
		leader.signal(t, syscall.SIGINT)
		if code := leader.exit(t); code != 0 {
			t.Errorf("leader %s after SIGINT: exit %d, want 0", p, code)
		}
	}
	listener.signal(t, syscall.SIGTERM)
	if code := listener.exit(t); code != 0 {
		t.Errorf("listener after SIGTERM: exit %d, want 0", code)
	}
	assertClean(t, c, name)
}
