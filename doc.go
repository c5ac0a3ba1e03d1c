// Package quietlock is leader election and distributed locks on etcd for
// primary/standby services, built so that waiting costs etcd nothing.
//
// The library is in its subpackages: [github.com/quietlock/quietlock/lock]
// for a mutex that is a drop-in for etcd's concurrency.Mutex, and
// [github.com/quietlock/quietlock/elect] for an election that is a drop-in
// for concurrency.Election plus a primary/standby runner. This package holds
// only the end-to-end tests.
package quietlock
