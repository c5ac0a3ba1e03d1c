// Package faulttest holds the fault, chaos and soak suites: quietlock's
// lock and election on a three-member etcd cluster whose members die, lose
// their raft leader, get cut off and compacted, and 10⁴ (or
// $QUIETLOCK_SOAK_CYCLES) acquire/release/cancel cycles that must leave
// nothing behind. They run in a package of their own so that `go test ./...`
// runs them beside the other suites.
package faulttest
