//go:build go1.24

package main

import (
	"strings"
	"syscall"
	"testing"

	"github.com/quietlock/quietlock/quietlocktest"
)

// etcdctl starts Debian's etcdctl against c, or skips the test.
func etcdctl(t *testing.T, c *quietlocktest.Etcd, name string, args ...string) *proc {
	t.Helper()
	bin := quietlocktest.Binary(t, quietlocktest.DebianEtcdctl, "etcd-client")
	return start(t, name, []string{"ETCDCTL_API=3"}, bin, append([]string{"--endpoints", c.Endpoint}, args...)...)
}

// quietlock lock and etcdctl lock exclude each other, both ways, and print
// the held key the same way. --try on a lock etcdctl holds exits 3 and
// writes nothing.
func TestInteropLock(t *testing.T) {
	quietlocktest.Binary(t, quietlocktest.DebianEtcdctl, "etcd-client")
	c := quietlocktest.New(t)
	const name = "/test/interop-lock"

	theirs := etcdctl(t, c, "etcdctl lock", "lock", name)
	theirKey, theirValue := theirs.line(t), theirs.line(t)
	if !strings.HasPrefix(theirKey, name+"/") || theirValue != "" {
		t.Fatalf("etcdctl lock printed %q, %q", theirKey, theirValue)
	}
	before := c.Stats()
	if code, _, stderr := runQL(t, nil, "lock", "--try", "--endpoints", c.Endpoint, name, "--", "true"); code != exitHeld {
		t.Errorf("--try on etcdctl's lock: exit %d, want %d; stderr %q", code, exitHeld, stderr)
	}
	if after := c.Stats(); after.Revision != before.Revision || after.RaftIndex != before.RaftIndex {
		t.Errorf("--try: revision %d -> %d, raft index %d -> %d, want no change",
			before.Revision, after.Revision, before.RaftIndex, after.RaftIndex)
	}
	theirs.signal(t, syscall.SIGINT)
	if code := theirs.exit(t); code != 0 {
		t.Errorf("etcdctl lock after SIGINT: exit %d; stderr %q", code, theirs.stderr.String())
	}

	ours := ql(t, "quietlock lock", "lock", "--endpoints", c.Endpoint, name)
	ourKey, ourValue := ours.line(t), ours.line(t)
	if !strings.HasPrefix(ourKey, name+"/") || ourValue != theirValue {
		t.Errorf("quietlock lock printed %q, %q; etcdctl lock printed %q, %q", ourKey, ourValue, theirKey, theirValue)
	}
	waiting := etcdctl(t, c, "etcdctl lock (waiting)", "lock", name)
	// etcdctl's waiter writes its queue key; it must not get the lock yet.
	quietlocktest.WaitFor(t, "etcdctl's queue key", func() bool { return len(c.Keys(name+"/")) == 2 })
	ours.signal(t, syscall.SIGTERM)
	if code := ours.exit(t); code != 0 {
		t.Errorf("quietlock lock after SIGTERM: exit %d", code)
	}
	if key := waiting.line(t); !strings.HasPrefix(key, name+"/") || key == ourKey {
		t.Errorf("etcdctl lock, after quietlock released, printed %q", key)
	}
	waiting.signal(t, syscall.SIGINT)
	waiting.exit(t)
	if keys := c.Keys(name + "/"); len(keys) != 0 {
		t.Errorf("keys left: %q", keys)
	}
}

// etcdctl elect -l sees quietlock's leader, quietlock elect -l sees
// etcdctl's, and both print a leader the same way.
func TestInteropElect(t *testing.T) {
	quietlocktest.Binary(t, quietlocktest.DebianEtcdctl, "etcd-client")
	c := quietlocktest.New(t)
	const name = "/test/interop-elect"

	ours := ql(t, "quietlock elect", "elect", "--endpoints", c.Endpoint, name, "ours")
	ourKey, ourValue := ours.line(t), ours.line(t)
	theirListener := etcdctl(t, c, "etcdctl elect -l", "elect", "-l", name)
	if k, v := theirListener.line(t), theirListener.line(t); k != ourKey || v != "ours" || ourValue != "ours" {
		t.Errorf("quietlock elect printed %q, %q; etcdctl elect -l printed %q, %q", ourKey, ourValue, k, v)
	}
	theirListener.signal(t, syscall.SIGINT)
	theirListener.exit(t)
	ours.signal(t, syscall.SIGINT)
	if code := ours.exit(t); code != 0 {
		t.Errorf("quietlock elect after SIGINT: exit %d", code)
	}

	theirs := etcdctl(t, c, "etcdctl elect", "elect", name, "theirs")
	theirKey, theirValue := theirs.line(t), theirs.line(t)
	ourListener := ql(t, "quietlock elect -l", "elect", "-l", "--endpoints", c.Endpoint, name)
	if k, v := ourListener.line(t), ourListener.line(t); k != theirKey || v != theirValue || v != "theirs" {
		t.Errorf("etcdctl elect printed %q, %q; quietlock elect -l printed %q, %q", theirKey, theirValue, k, v)
	}
	ourListener.signal(t, syscall.SIGTERM)
	if code := ourListener.exit(t); code != 0 {
		t.Errorf("quietlock elect -l after SIGTERM: exit %d", code)
	}
	theirs.signal(t, syscall.SIGINT)
	theirs.exit(t)
	if keys := c.Keys(name + "/"); len(keys) != 0 {
		t.Errorf("keys left: %q", keys)
	}
}
