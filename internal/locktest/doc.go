// Package locktest holds the runnable examples of package lock, against a
// real etcd from the quietlocktest kit (the end-to-end tests of lock are in
// the repository's root package).
//
// They live here rather than beside lock because a service that imports
// lock has its `go mod tidy` resolve the imports of lock's own tests: an
// import of the kit there would make every such service resolve the kit's
// module, and with it the etcd server's. No service imports this package.
package locktest
