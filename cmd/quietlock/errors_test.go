//go:build go1.24

package main

import (
	"net"
	"strings"
	"testing"

	"github.com/quietlock/quietlock/quietlocktest"
)

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// Bad usage exits 2 with one line on stderr, before connecting to etcd (the
// endpoint is a closed port, so an attempt would exit 1).
func TestUsage(t *testing.T) {
	nowhere := "--endpoints=" + closedPort(t)
	for _, tc := range []struct {
		args []string
		env  []string
		msg  string
	}{
		{args: nil, msg: "missing subcommand"},
		{args: []string{"frobnicate"}, msg: "unknown subcommand"},
		{args: []string{"lock", nowhere, "--bogus", "n"}, msg: "flag provided but not defined: -bogus"},
		{args: []string{"lock", nowhere}, msg: "missing lock name"},
		{args: []string{"lock", nowhere, "n", "--"}, msg: "missing command"},
		{args: []string{"lock", nowhere, "--ttl", "1.5s", "n"}, msg: "-ttl"},
		{args: []string{"lock", nowhere, "--ttl", "0", "n"}, msg: "-ttl"},
		{args: []string{"lock", nowhere, "--try", "--timeout", "1s", "n"}, msg: "exclude"},
		{args: []string{"lock", nowhere, "--timeout", "-1s", "n"}, msg: "negative"},
		{args: []string{"lock", nowhere, "--kill-grace", "-1s", "n"}, msg: "negative"},
		{args: []string{"lock", nowhere, "--user", "alice", "n"}, msg: "password"},
		{args: []string{"lock", nowhere, "--cert", "c.pem", "n"}, msg: "--key"},
		{args: []string{"lock", "n"}, env: []string{"ETCDCTL_DIAL_TIMEOUT=soon"}, msg: "ETCDCTL_DIAL_TIMEOUT"},
		{args: []string{"elect", nowhere}, msg: "missing election name"},
		{args: []string{"elect", nowhere, "n", "p", "extra"}, msg: "unexpected argument"},
		{args: []string{"elect", nowhere, "-l", "n", "p"}, msg: "-l takes no proposal"},
		{args: []string{"elect", nowhere, "--safety-margin", "5s", "n", "p"}, msg: "half of --ttl"},
		{args: []string{"elect", nowhere, "--safety-margin", "1s", "--kill-grace", "600ms", "n", "p", "--", "true"}, msg: "--kill-grace 600ms is more than half of --safety-margin 1s"},
		{args: []string{"elect", nowhere, "--ttl", "4s", "--kill-grace", "1s", "n", "p", "--", "true"}, msg: "--kill-grace"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := runQL(t, tc.env, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d; stderr %q", code, exitUsage, stderr)
			}
			msg := strings.TrimSuffix(stderr, "\n")
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.msg) {
				t.Errorf("stderr %q, want one line with %q", stderr, tc.msg)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want none", stdout)
			}
		})
	}
}

// A command that cannot be run is reported before anything is acquired,
// with a shell's exit codes.
func TestCommandNotFound(t *testing.T) {
	nowhere := "--endpoints=" + closedPort(t)
	for _, sub := range [][]string{{"lock", nowhere, "n"}, {"elect", nowhere, "n", "p", "--"}} {
		code, _, stderr := runQL(t, nil, append(sub, "/nonexistent/command")...)
		if code != exitNotFound || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "cannot run") {
			t.Errorf("%s: exit %d, stderr %q; want %d and one line", sub[0], code, stderr, exitNotFound)
		}
	}
}

// An unreachable etcd exits 1 with one line, after the dial timeout; the
// waits are bounded by runQL, generously.
func TestUnreachable(t *testing.T) {
	addr := closedPort(t)
	for _, tc := range []struct {
		args []string
		env  []string
	}{
		{args: []string{"lock", "--endpoints", addr, "--dial-timeout", "1s", "n", "--", "true"}},
		{args: []string{"elect", "--endpoints", addr, "--dial-timeout", "1s", "n", "p"}},
		{args: []string{"elect", "-l", "n"}, env: []string{"ETCDCTL_ENDPOINTS=" + addr, "ETCDCTL_DIAL_TIMEOUT=1s"}},
	} {
		code, stdout, stderr := runQL(t, tc.env, tc.args...)
		if code != exitError || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, addr+" unreachable") {
			t.Errorf("quietlock %s: exit %d, stdout %q, stderr %q; want %d and one line naming %s",
				strings.Join(tc.args, " "), code, stdout, stderr, exitError, addr)
		}
	}
}

// etcdctl's environment variables are honoured, and a flag on the command
// line wins over its variable.
func TestEnvironment(t *testing.T) {
	c := quietlocktest.New(t)
	addr := closedPort(t)
	const name = "/test/env"
	for _, tc := range []struct {
		env  []string
		args []string
		want int
	}{
		{[]string{"ETCDCTL_ENDPOINTS=" + c.Endpoint}, nil, 0},
		{[]string{"ETCDCTL_ENDPOINTS=" + addr}, []string{"--endpoints", c.Endpoint}, 0},
		{[]string{"ETCDCTL_ENDPOINTS=" + c.Endpoint, "ETCDCTL_DIAL_TIMEOUT=1s"}, []string{"--endpoints", addr}, exitError},
	} {
		args := append(append([]string{"lock"}, tc.args...), name, "--", "true")
		if code, _, stderr := runQL(t, tc.env, args...); code != tc.want {
			t.Errorf("%v quietlock %s: exit %d, want %d; stderr %q", tc.env, strings.Join(args, " "), code, tc.want, stderr)
		}
	}
	assertClean(t, c, name)
}
