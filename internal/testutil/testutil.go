// Package testutil holds the helpers that several of quietlock's test
// packages share. It imports neither the test kit nor etcd's server, so
// that the library module builds without them.
package testutil

import (
	"os"
	"runtime"
	"strings"
	"testing"
)

// envEtcd is quietlocktest.EnvEtcd: the variable that names an etcd binary
// to run the suites against instead of the embedded server.
const envEtcd = "QUIETLOCK_TEST_ETCD"

// SkipOnExternal skips tests that build their own embedded servers when
// the suites run against an external etcd: they would only repeat
// themselves.
func SkipOnExternal(t testing.TB) {
	t.Helper()
	if os.Getenv(envEtcd) != "" {
		t.Skipf("runs on embedded servers only (%s is set)", envEtcd)
	}
}

// LibraryGoroutines counts the goroutines running the library's own code
// (watch entries, hold watchers, runners), not the test helpers'. The
// process's total also counts an embedded server's goroutines, which come
// and go on their own.
func LibraryGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, pkg := range []string{"/lock.", "/elect.", "/internal/watchwait.", "/internal/acquire."} {
			if strings.Contains(g, "github.com/quietlock/quietlock"+pkg) {
				n++
				break
			}
		}
	}
	return n
}
