// Package demotest holds the end-to-end tests of the demo binary,
// examples/primary-standby. The demo lives in a module of its own (it runs
// an embedded etcd server); its tests live here, in the library's module,
// so that the README's `go test ./...` runs them.
package demotest
