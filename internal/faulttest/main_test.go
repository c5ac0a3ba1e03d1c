//go:build go1.24

package faulttest_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// A three-member embedded etcd leaves its raft peers' HTTP
		// connections behind when closed: measured with a cluster that is
		// only started and closed. quietlock uses no net/http, and the
		// tests' own /metrics scrapes close their connections.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
	)
}

// ttl is the session TTL, in seconds, of tests that do not let sessions
// expire: long enough that no lease expires while a test runs.
const ttl = 30
