//go:build go1.24

package soaktest_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// An embedded etcd can leave HTTP connections behind when closed
		// (measured with a three-member cluster only started and closed).
		// quietlock uses no net/http, and the tests' own /metrics scrapes
		// close their connections.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
	)
}

// ttl is the session TTL, in seconds, of tests that do not let sessions
// expire: long enough that no lease expires while a test runs.
const ttl = 30
