// Package electtest holds the end-to-end tests and runnable examples of
// package elect, against a real etcd from the quietlocktest kit.
//
// They live here rather than beside elect because a service that imports
// elect has its `go mod tidy` resolve the imports of elect's own tests: an
// import of the kit there would make every such service resolve the kit's
// module, and with it the etcd server's. No service imports this package.
package electtest
