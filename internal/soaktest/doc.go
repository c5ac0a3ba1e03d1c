// Package soaktest holds the soak suite: 10⁴ (or $QUIETLOCK_SOAK_CYCLES)
// acquire/release/cancel cycles that must leave no keys, leases, watchers,
// streams or goroutines behind. It is a package of its own so that
// `go test ./...` runs it beside the fault suites.
package soaktest
