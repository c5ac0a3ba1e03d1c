// Package compat proves that the library works with the oldest versions it
// supports: this module pins the lowest etcd client (and is run with the
// lowest Go toolchain) that github.com/quietlock/quietlock's go.mod
// requires, imports lock and elect, and runs a representative part of the
// end-to-end suites against a real etcd server binary.
//
// It is not part of the go.work workspace (which would raise every module
// to the versions the embedded server needs). Run it with:
//
//	cd compat && GOWORK=off GOTOOLCHAIN=go1.23.0 go test ./...
//
// The server is the etcd binary named by $QUIETLOCK_TEST_ETCD, by default
// Debian's /usr/bin/etcd (apt-get install etcd-server).
package compat
