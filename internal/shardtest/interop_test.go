//go:build go1.24

package shardtest_test

import (
	"bufio"
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/quietlock/quietlock/quietlocktest"
)

// `etcdctl elect -l` on a shard's election prints the shard's leader.
func TestEtcdctlObservesShard(t *testing.T) {
	bin := quietlocktest.Binary(t, quietlocktest.DebianEtcdctl, "etcd-client")
	c := quietlocktest.New(t)
	j := &journal{}
	a := start(t, c.NewClient(), j, "node-a", shardNames(2))
	quietlocktest.WaitFor(t, "a leads both", func() bool { return balanced(t, c, 2, a) })

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--endpoints", c.Endpoint, "elect", "-l", pfx+"/shards/s001")
	cmd.Env = append(cmd.Environ(), "ETCDCTL_API=3")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
	}()
	// etcdctl prints the leader's key, then its value.
	sc := bufio.NewScanner(out)
	var lines []string
	for len(lines) < 2 && sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) != 2 || lines[1] != "node-a" {
		t.Fatalf("etcdctl elect -l printed %q, want the leader key and node-a", lines)
	}
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
}
