package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/quietlock/quietlock/lock"
)

const lockHelp = `Usage: quietlock lock [flags] NAME [COMMAND [ARGS...]]

Acquires the lock NAME (etcd keys NAME/<lease>, as etcdctl lock's: the two
exclude each other) and, while it holds it:

  - without COMMAND: prints the held key, as etcdctl lock does, and holds
    the lock until SIGINT, SIGTERM or SIGHUP; then releases it and exits 0.
  - with COMMAND (after NAME, or after --): runs it with $ETCD_LOCK_KEY,
    $ETCD_LOCK_REV, $QUIETLOCK_KEY and $QUIETLOCK_TOKEN set, in a process
    group of its own; forwards SIGINT, SIGTERM and SIGHUP to that group;
    releases the lock once the command has exited (and whatever it left in
    its group has been stopped), and exits with the command's exit code
    (128+N if it died of signal N).

While it waits, quietlock writes nothing to etcd: no queue key, unlike
etcdctl lock.

If the hold ends while the command runs (the lease expired or the key was
deleted), the command's group gets SIGTERM, then SIGKILL after --kill-grace,
and quietlock exits 5. A lock learns of its loss only after the fact:
another holder may already be running by then, for up to about --kill-grace
(or, if quietlock is cut off from etcd, until its session times out). Keep
--kill-grace short, fence your writes with $QUIETLOCK_TOKEN, and for a
daemon that must never overlap with its successor use quietlock elect, which
steps down before etcd can expire its lease.

Exit codes: the command's; 0 released after a signal (no command); 1 error;
2 usage; 3 --try found the lock held; 4 --timeout passed; 5 the lock was
lost; 126/127 the command could not be run / was not found; 128+N a signal
N arrived while waiting for the lock.
`

// lockOptions are the flags and arguments of quietlock lock.
type lockOptions struct {
	common
	try     bool
	timeout time.Duration
}

func parseLock(args []string, stdout io.Writer) (*lockOptions, error) {
	o := &lockOptions{}
	fs := newFlagSet("lock")
	o.register(fs)
	fs.BoolVar(&o.try, "try", false, "if the lock is held elsewhere, exit 3 at once, having written nothing to etcd")
	fs.DurationVar(&o.timeout, "timeout", 0, "give up waiting for the lock after this long and exit 4; 0 waits for ever")
	pos, command, dashed, err := parseArgs(fs, args, 1, true)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(stdout, fs, lockHelp)
		return nil, errHelpShown
	}
	if err != nil {
		return nil, err
	}
	if dashed && len(pos) == 0 && len(command) > 0 {
		// quietlock lock [flags] -- NAME COMMAND...
		pos, command = command[:1], command[1:]
	}
	if len(pos) == 0 {
		return nil, errors.New("missing lock name")
	}
	o.name, o.command = pos[0], command
	if dashed && len(command) == 0 {
		return nil, errors.New("missing command after --")
	}
	if err := o.applyEnv(fs); err != nil {
		return nil, err
	}
	switch {
	case o.timeout < 0:
		return nil, fmt.Errorf("--timeout %v is negative", o.timeout)
	case o.try && o.timeout > 0:
		return nil, errors.New("--try and --timeout exclude each other")
	}
	return o, o.validate()
}

// runLock runs quietlock lock and returns the exit code.
func runLock(o *lockOptions, out *printer, sigs <-chan os.Signal) int {
	if len(o.command) > 0 {
		// Find out before acquiring anything that the command can run.
		if code, err := lookCommand(o.command); err != nil {
			out.fail(fmt.Errorf("cannot run %s: %w", o.command[0], err))
			return code
		}
	}
	// Until the lock is held, a signal means giving up.
	ctx, stopWatching := untilSignal(sigs)
	defer stopWatching() // for the paths that do not ask which signal came
	cli, err := connect(ctx, &o.conn, o.name)
	if err != nil {
		if sig := stopWatching(); sig != nil {
			return exitSignal(sig)
		}
		return out.fail(err)
	}
	defer cli.Close()

	if o.try {
		// Read before making a session: a lease grant is a raft entry, and a
		// --try that finds the lock held must write nothing at all.
		owner, token, err := ownerOf(ctx, cli, o.name)
		if err != nil {
			if sig := stopWatching(); sig != nil {
				return exitSignal(sig)
			}
			return out.fail(fmt.Errorf("lock %s: %w", o.name, err))
		}
		if owner != "" {
			stopWatching()
			out.emit(event{Event: "held", Key: owner, Token: token})
			return exitHeld
		}
	}

	s, err := newSession(ctx, cli, o.ttl)
	if err != nil {
		if sig := stopWatching(); sig != nil {
			return exitSignal(sig)
		}
		return out.fail(err)
	}
	defer closeSession(s)

	m := lock.NewMutex(s, o.name)
	var timedOut func() bool
	if o.try {
		err = m.TryLock(ctx)
	} else {
		lctx := ctx
		if o.timeout > 0 {
			var cancel context.CancelFunc
			lctx, cancel = context.WithTimeout(ctx, o.timeout)
			defer cancel()
		}
		timedOut = func() bool { return errors.Is(lctx.Err(), context.DeadlineExceeded) }
		out.emit(event{Event: "waiting"})
		err = m.Lock(lctx)
	}
	sig := stopWatching()
	switch {
	case errors.Is(err, concurrency.ErrLocked):
		// Taken between the read and the claim; the claim was undone.
		out.emit(event{Event: "held"})
		return exitHeld
	case err != nil && sig != nil:
		return exitSignal(sig)
	case err != nil && timedOut != nil && timedOut():
		out.warn(event{Event: "timeout"}, fmt.Sprintf("lock %s: not acquired within %v", o.name, o.timeout))
		return exitTimeout
	case err != nil:
		return out.fail(fmt.Errorf("lock %s: %w", o.name, err))
	}
	defer unlock(m, out)
	if sig != nil {
		// It arrived as the lock was won: give it back.
		return exitSignal(sig)
	}

	key := m.Key()
	acquired := event{Event: "acquired", Key: key, Token: m.Rev()}
	if len(o.command) > 0 {
		// As etcdctl lock, print nothing: stdout is the command's.
		out.emit(acquired)
		return runHeld(o, m, out, sigs)
	}
	// As etcdctl lock, print the held key and its (empty) value.
	out.emit(acquired, key, "")
	select {
	case sig := <-sigs:
		out.emit(event{Event: "signal", Signal: signalName(sig)})
		return exitOK
	case <-m.Done():
		out.warn(event{Event: "lost", Key: key, Reason: m.Err().Error()},
			fmt.Sprintf("lock %s lost: %v", o.name, m.Err()))
		return exitLost
	}
}

// runHeld runs the command while m holds the lock, and returns the exit
// code.
func runHeld(o *lockOptions, m *lock.Mutex, out *printer, sigs <-chan os.Signal) int {
	key, token := m.Key(), m.Rev()
	env := append(os.Environ(),
		"ETCD_LOCK_KEY="+key, // etcdctl's
		fmt.Sprintf("ETCD_LOCK_REV=%d", token),
		"QUIETLOCK_KEY="+key,
		fmt.Sprintf("QUIETLOCK_TOKEN=%d", token))
	ch, err := startChild(o.command, env)
	if err != nil {
		out.fail(fmt.Errorf("cannot run %s: %w", o.command[0], err))
		return startExitCode(err)
	}
	out.emit(event{Event: "started", Key: key, Token: token, PID: ch.PID()})
	for {
		select {
		case <-ch.Done():
			code := ch.ExitCode()
			// Whatever the command left running in its group must not
			// outlive the lock.
			ch.Stop(o.killGrace)
			out.emit(event{Event: "exited", PID: ch.PID(), ExitCode: &code})
			return code
		case sig := <-sigs:
			ch.Signal(sig)
			out.emit(event{Event: "signal", Signal: signalName(sig), PID: ch.PID()})
		case <-m.Done():
			reason := m.Err()
			out.warn(event{Event: "lost", Key: key, Reason: reason.Error()},
				fmt.Sprintf("lock %s lost (%v): stopping the command", o.name, reason))
			ch.Stop(o.killGrace)
			code := ch.ExitCode()
			out.emit(event{Event: "exited", PID: ch.PID(), ExitCode: &code, Signal: stopSignal(code)})
			return exitLost
		}
	}
}

// stopSignal names the signal that ended a command whose exit code is
// code, if it was SIGTERM or SIGKILL.
func stopSignal(code int) string {
	switch code {
	case 128 + int(syscall.SIGTERM):
		return "SIGTERM"
	case 128 + int(syscall.SIGKILL):
		return "SIGKILL"
	}
	return ""
}

// ownerOf returns the key that owns the lock name and its create revision,
// or "" if the lock is free: the key with the lowest create revision under
// name + "/", as lock.Mutex and etcd's Mutex decide.
func ownerOf(ctx context.Context, cli *clientv3.Client, name string) (key string, token int64, err error) {
	resp, err := cli.Get(ctx, name+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", 0, err
	}
	if len(resp.Kvs) == 0 {
		return "", 0, nil
	}
	return string(resp.Kvs[0].Key), resp.Kvs[0].CreateRevision, nil
}

// unlock releases m's hold, bounded by cleanupTimeout. If that fails the
// key goes with the session's lease (see closeSession).
func unlock(m *lock.Mutex, out *printer) {
	key := m.Key()
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if err := m.Unlock(ctx); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		out.warn(event{Event: "unlock-failed", Key: key, Reason: err.Error()},
			fmt.Sprintf("unlock %s: %v (the key goes with the lease)", key, err))
		return
	}
	if errors.Is(m.Err(), lock.ErrUnlocked) {
		out.emit(event{Event: "released", Key: key})
	}
}
