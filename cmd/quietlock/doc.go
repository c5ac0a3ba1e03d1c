// Command quietlock runs a command on one machine at a time, under a lock
// or an election on etcd whose waiters write nothing to etcd. It is meant
// for cron jobs and singleton daemons, in place of `etcdctl lock NAME cmd`
// and `consul lock`, and takes etcdctl's arguments, flags, environment
// variables and output where etcdctl has them, so that a script can switch
// by changing the command's name.
//
//	go install github.com/quietlock/quietlock/cmd/quietlock@latest
//
// # Usage
//
//	quietlock lock [flags] NAME [COMMAND [ARGS...]]
//	quietlock elect [flags] NAME [PROPOSAL] [-- COMMAND [ARGS...]]
//	quietlock elect -l [flags] NAME
//
// quietlock lock acquires the lock NAME (etcd keys NAME/<lease ID in hex>,
// the layout of etcdctl lock and etcd's concurrency.Mutex, so that they
// exclude each other). Without a command it prints the held key and its
// empty value, as etcdctl lock does, and holds the lock until SIGINT,
// SIGTERM or SIGHUP, then releases it and exits 0. With a command (after
// NAME, or after --) it runs the command while it holds the lock, releases
// the lock when the command exits, and exits with the command's exit code.
// --try exits 3 at once, having written nothing to etcd (not even a lease),
// if the lock is held; --timeout gives up waiting after a while and exits 4.
//
// quietlock elect campaigns in the election NAME (etcdctl elect's layout)
// with the value PROPOSAL (default HOSTNAME-PID), and campaigns again after
// each term it loses. When elected it prints the leader key and the
// proposal, as etcdctl elect does. With a command (after --) it runs the
// command for each term it leads; when the command exits by itself,
// quietlock resigns at once, so that a standby takes over without waiting
// for the lease to expire, and exits with the command's exit code. With -l
// it only observes, printing the key and value of each new leader as
// etcdctl elect -l does.
//
// While waiting for a lock or campaigning, quietlock writes nothing to
// etcd: no queue key (etcdctl's waiters each write one), no retries.
//
// # Flags
//
// Connection, as etcdctl's, each also read from etcdctl's environment
// variable when not given on the command line: --endpoints
// ($ETCDCTL_ENDPOINTS, default 127.0.0.1:2379), --dial-timeout
// ($ETCDCTL_DIAL_TIMEOUT, default 2s), --user user[:password]
// ($ETCDCTL_USER), --password ($ETCDCTL_PASSWORD), --cacert
// ($ETCDCTL_CACERT), --cert ($ETCDCTL_CERT), --key ($ETCDCTL_KEY). An etcd
// that does not answer a first read within the dial timeout is reported as
// unreachable.
//
// Both subcommands: --ttl (the session's lease TTL, whole seconds, as 10 or
// 10s; default 10s), --kill-grace (default 1s; for elect, at most half of
// --safety-margin), --json. lock: --try, --timeout (default 0: wait for
// ever). elect: -l/--listen, --safety-margin (default 2s, or a quarter of
// --ttl if less). Flags are accepted with one dash or two, before or after
// NAME; after the command's first word they are the command's.
//
// # The command
//
// The command runs in a process group of its own, with quietlock's stdin,
// stdout and stderr. SIGINT, SIGTERM and SIGHUP received by quietlock are
// forwarded to the group; the command decides when to exit. Its environment
// has QUIETLOCK_KEY (the held key) and QUIETLOCK_TOKEN (the fencing token:
// the key's create revision, larger for every later holder), and for lock
// also etcdctl's ETCD_LOCK_KEY and ETCD_LOCK_REV. When the command exits,
// whatever it left running in its group is stopped as below before the
// lock or leadership is released. On Linux the command's first process is
// killed if quietlock itself dies.
//
// When the hold ends while the command runs (the lock's lease expired or
// its key was deleted; the election's term ended), the group gets SIGTERM,
// then SIGKILL after --kill-grace.
//
// # The kill-grace rule
//
// elect ends a term before etcd can expire the lease: at the send time of
// the last lease renewal etcd answered, plus --ttl, minus --safety-margin,
// on this machine's clock. --kill-grace must be at most half of
// --safety-margin (a usage error otherwise), so that the command is dead
// before etcd can expire the lease and elect another leader; the other half
// covers quietlock's own delays. The margin must also cover this machine's
// pauses: a process stopped for longer than the margin can still act after
// its term ended. With the defaults (--ttl 10s, --safety-margin 2s,
// --kill-grace 1s) a leader cut off from etcd kills its command at most 1 s
// after its term ends and at least 1 s before another can be elected.
//
// lock has no such early warning: a lock's loss is learnt after the fact,
// when another holder may already be running (for up to about --kill-grace,
// or, when quietlock is cut off from etcd, until its session times out).
// Keep its --kill-grace short, fence writes with QUIETLOCK_TOKEN, and use
// elect for daemons that must never overlap with their successor.
//
// # Exit codes
//
//	the command's   the command exited (128+N if it died of signal N)
//	0               no command: released after SIGINT, SIGTERM or SIGHUP;
//	                elect: stopped by a signal while not running a command
//	1               error: etcd unreachable, a request refused, ...
//	2               usage: bad flags or arguments (one line on stderr)
//	3               lock --try: the lock is held elsewhere
//	4               lock --timeout: not acquired in time
//	5               lock: the lock was lost while held (any command was stopped)
//	126, 127        the command could not be started, or was not found
//	128+N           lock: signal N arrived while waiting for the lock
//
// A command's own exit code can be any of these; with --json the events say
// which it was.
//
// # Output
//
// Without --json, stdout carries only what etcdctl prints, and only when no
// command runs (a command's stdout is its own): lock prints the held key,
// then its empty value; elect the leader key, then the proposal; elect -l
// each new leader's key and value. stderr gets one line for an error, for
// a loss of the lock or of leadership, or for a --timeout. lock --try
// prints nothing when the lock is held, so cron mails nothing.
//
// With --json, stdout carries one JSON object per line: time (RFC 3339),
// event, name, and as the event has them key, leader (a leader's value),
// token, pid, exit_code, signal, reason. lock's events: waiting, held,
// acquired, started, signal, exited, lost, timeout, released,
// unlock-failed. elect's: campaigning, leader, elected, started, signal,
// exited, stepped-down, released. The command's own output goes to the same
// stdout.
//
// # What is left in etcd
//
// Nothing, on every path that quietlock survives: the lock is released
// (or the leader resigns) and the session's lease is revoked, each bounded
// by 5 s; if etcd cannot be reached then, the lease expires within --ttl. A
// quietlock killed with SIGKILL leaves its lease to expire.
package main
