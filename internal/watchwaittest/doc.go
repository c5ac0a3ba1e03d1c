// Package watchwaittest holds the tests of package internal/watchwait,
// against a real etcd from the quietlocktest kit.
//
// They live here rather than beside watchwait because a service that
// imports quietlock has its `go mod tidy` resolve the imports of the tests
// of every package it builds: an import of the kit there would make every
// such service resolve the kit's module, and with it the etcd server's. No
// service imports this package.
package watchwaittest
