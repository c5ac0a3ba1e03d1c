// Package demotest holds the end-to-end tests of the demo binaries,
// examples/primary-standby and examples/sharded. The demos live in a module
// of their own (they run an embedded etcd server); their tests live here, in
// the library's module, so that the README's `go test ./...` runs them.
package demotest
