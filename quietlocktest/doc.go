// Package quietlocktest runs a real etcd server for tests of code that uses
// quietlock (or any etcd client), and measures what that code costs the
// server.
//
// Start a server for a test with [New]: an embedded etcd in t.TempDir() on
// free loopback ports, stopped when the test ends, with a client ready in
// [Etcd.Client]. Cut one client off from it with a [Proxy] ([NewProxy],
// then [Proxy.Blackhole], [Proxy.Drop] and [Proxy.Heal]). Count what the
// server stores and serves with [Etcd.Stats] (store revision, raft applied
// index, server watchers and watch streams) and [Etcd.Keys].
//
// # Counting, not timing
//
// A server returned by [New], [StartServer] or [StartCluster] is quiet: it
// has applied the entries etcd writes by itself after it starts (member
// attributes, the cluster version), so from then on the store revision and
// the raft index move only when a client writes. A test can therefore read
// [Etcd.Stats] before an operation and after it and assert that the
// operation wrote nothing, without sleeping. [WaitFor] waits for a state,
// bounded by a generous deadline; it is not for measuring durations.
//
// The watcher gauges (etcd_debugging_mvcc_watcher_total and
// etcd_debugging_mvcc_watch_stream_total) are process-wide: when several
// embedded servers run in one test binary at once, they add up. Compare them
// only in tests that do not run in parallel with another server's.
//
// # Another etcd release
//
// With the environment variable QUIETLOCK_TEST_ETCD ([EnvEtcd]) set to the
// path of an etcd binary, [New] runs that binary instead of the embedded
// server, so the same tests run against another release (say Debian's etcd
// 3.4). [NewExternal] does so explicitly.
//
// All network traffic stays on 127.0.0.1.
package quietlocktest
