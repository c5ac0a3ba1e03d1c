// Package faulttest holds the fault and chaos suites: quietlock's lock and
// election on a three-member etcd cluster whose members die, lose their
// raft leader, get cut off and compacted. They run in a package of their
// own so that `go test ./...` runs them beside the other suites.
package faulttest
