package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/quietlock/quietlock/elect"
)

// defaultSafetyMargin is --safety-margin's default, or a quarter of the TTL
// if that is less. Half of it goes to the command (--kill-grace, 1 s by
// default), the other half covers quietlock's own delays.
const defaultSafetyMargin = 2 * time.Second

const electHelp = `Usage: quietlock elect [flags] NAME [PROPOSAL] [-- COMMAND [ARGS...]]
       quietlock elect -l [flags] NAME

Campaigns in the election NAME (etcd keys NAME/<lease>, as etcdctl elect's:
the two interoperate) with the value PROPOSAL (default: HOSTNAME-PID), and
campaigns again after each term it loses. While it waits it writes nothing
to etcd. When it becomes leader it prints the leader key and PROPOSAL, as
etcdctl elect does.

With COMMAND (after --), it runs the command for each term it leads, in a
process group of its own, with $QUIETLOCK_KEY and $QUIETLOCK_TOKEN (the
fencing token) set, and forwards SIGINT, SIGTERM and SIGHUP to that group:

  - The term ends before etcd can expire the lease: at the send time of the
    last lease renewal etcd answered + --ttl - --safety-margin, on this
    machine's clock. Then the command's group gets SIGTERM, and SIGKILL
    after --kill-grace; once it is dead the key is released and quietlock
    campaigns again, to run the command again in its next term.
  - The kill-grace rule: --kill-grace must be at most half of
    --safety-margin, so that the command is dead before etcd can expire the
    lease and elect another leader. The other half covers quietlock's own
    delays; the margin must also cover pauses of this machine.
  - When the command exits by itself, quietlock resigns at once (a standby
    takes over without waiting for the TTL) and exits with the command's
    exit code (128+N if it died of signal N). So does SIGINT or SIGTERM:
    forwarded to the command, which decides when to exit.

Without COMMAND, quietlock leads until SIGINT, SIGTERM or SIGHUP, then
resigns and exits 0. A standby exits 0 on SIGINT or SIGTERM (and, without
COMMAND, SIGHUP).

With -l (--listen) it only observes: it prints the key and value of each
new leader, as etcdctl elect -l does, until SIGINT, SIGTERM or SIGHUP.

Exit codes: the command's; 0 stopped by a signal; 1 error; 2 usage;
126/127 the command could not be run / was not found.
`

// electOptions are the flags and arguments of quietlock elect.
type electOptions struct {
	common
	listen   bool
	margin   time.Duration
	proposal string
}

func parseElect(args []string, stdout io.Writer) (*electOptions, error) {
	o := &electOptions{}
	fs := newFlagSet("elect")
	o.register(fs)
	fs.BoolVar(&o.listen, "listen", false, "observe only: print each new leader's key and value")
	fs.BoolVar(&o.listen, "l", false, "short for --listen")
	fs.DurationVar(&o.margin, "safety-margin", defaultSafetyMargin, "a leader that hears nothing from etcd steps down this long before its lease could expire; the default is at most a quarter of --ttl")
	fs.Lookup("kill-grace").Usage = "when the term ends, how long the command's process group has between SIGTERM and SIGKILL, at most half of --safety-margin (the default is capped there too); 0: SIGKILL at once"
	pos, command, dashed, err := parseArgs(fs, args, 2, false)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(stdout, fs, electHelp)
		return nil, errHelpShown
	}
	if err != nil {
		return nil, err
	}
	switch {
	case len(pos) == 0:
		return nil, errors.New("missing election name")
	case dashed && len(command) == 0:
		return nil, errors.New("missing command after --")
	}
	o.name, o.command = pos[0], command
	if err := o.applyEnv(fs); err != nil {
		return nil, err
	}
	if len(pos) == 2 {
		o.proposal = pos[1]
		if o.proposal == "" {
			return nil, errors.New("the proposal must not be empty")
		}
	}
	if o.listen {
		if len(pos) == 2 || len(command) > 0 {
			return nil, errors.New("-l takes no proposal and no command")
		}
		return o, o.validate()
	}
	if o.proposal == "" {
		host, _ := os.Hostname()
		o.proposal = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	ttl := time.Duration(o.ttl)
	if !o.set["safety-margin"] {
		o.margin = min(defaultSafetyMargin, ttl/4)
	}
	if !o.set["kill-grace"] {
		o.killGrace = min(defaultKillGrace, o.margin/2)
	}
	switch {
	case o.margin <= 0:
		return nil, fmt.Errorf("--safety-margin %v is not positive", o.margin)
	case 2*o.margin >= ttl:
		return nil, fmt.Errorf("--safety-margin %v is not less than half of --ttl %v", o.margin, ttl)
	case o.killGrace > o.margin/2:
		return nil, fmt.Errorf("--kill-grace %v is more than half of --safety-margin %v: the command might outlive the lease", o.killGrace, o.margin)
	}
	return o, o.validate()
}

// runElect runs quietlock elect and returns the exit code.
func runElect(o *electOptions, out *printer, sigs <-chan os.Signal) int {
	if len(o.command) > 0 {
		if code, err := lookCommand(o.command); err != nil {
			out.fail(fmt.Errorf("cannot run %s: %w", o.command[0], err))
			return code
		}
	}
	ctx, stopWatching := untilSignal(sigs)
	cli, err := connect(ctx, &o.conn, o.name)
	sig := stopWatching()
	switch {
	case err != nil && sig != nil:
		return exitOK
	case err != nil:
		return out.fail(err)
	}
	defer cli.Close()
	if sig != nil {
		return exitOK
	}
	if o.listen {
		return listen(o, cli, out, sigs)
	}
	return campaign(o, cli, out, sigs)
}

// listen prints each new leader until a signal arrives.
func listen(o *electOptions, cli *clientv3.Client, out *printer, sigs <-chan os.Signal) int {
	ctx, stopWatching := untilSignal(sigs)
	defer stopWatching()
	// An Election needs a session, as etcdctl's observer has one: one lease
	// grant now, one revocation at the end, nothing written in between.
	s, err := newSession(ctx, cli, o.ttl)
	if err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		return out.fail(err)
	}
	defer closeSession(s)
	// The channel closes when ctx ends, on a signal.
	for resp := range elect.NewElection(s, o.name).Observe(ctx) {
		kv := resp.Kvs[0]
		key, value := string(kv.Key), string(kv.Value)
		out.emit(event{Event: "leader", Key: key, Leader: &value, Token: kv.CreateRevision}, key, value)
	}
	return exitOK
}

// elector runs the command, if any, for each term that elect.Run wins.
type elector struct {
	o    *electOptions
	out  *printer
	stop context.CancelFunc // ends Run: it ends the term, resigns and returns

	mu       sync.Mutex
	child    *child // the current term's command, while it runs
	stopping bool   // SIGINT or SIGTERM arrived: start no command, end after the current one
	exit     *int   // the exit code, once a command has decided it
}

// campaign runs elect.Run until a signal or the command ends it.
func campaign(o *electOptions, cli *clientv3.Client, out *printer, sigs <-chan os.Signal) int {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	e := &elector{o: o, out: out, stop: stop}
	done := make(chan error, 1)
	out.emit(event{Event: "campaigning", Leader: &o.proposal})
	go func() {
		done <- elect.Run(ctx, cli, o.name, o.proposal, elect.Callbacks{
			OnStartedLeading: e.lead,
			OnStoppedLeading: e.stoppedLeading,
			OnNewLeader:      e.newLeader,
		}, elect.WithTTL(time.Duration(o.ttl)), elect.WithSafetyMargin(o.margin))
	}()
	for {
		select {
		case sig := <-sigs:
			e.signal(sig)
		case err := <-done:
			if err != nil {
				return out.fail(fmt.Errorf("elect %s: %w", o.name, err))
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			if e.exit != nil {
				return *e.exit
			}
			return exitOK
		}
	}
}

// signal handles a signal quietlock received: forwarded to the command if
// one runs; otherwise SIGINT and SIGTERM (and SIGHUP without a command, as
// for a terminal's hangup) end the campaign. With a command, SIGHUP is only
// ever forwarded, as a daemon's reload, so a standby keeps campaigning.
func (e *elector) signal(sig os.Signal) {
	ends := sig != syscall.SIGHUP || len(e.o.command) == 0
	e.mu.Lock()
	c := e.child
	if ends {
		e.stopping = true
	}
	e.mu.Unlock()
	switch {
	case c != nil:
		c.Signal(sig)
		e.out.emit(event{Event: "signal", Signal: signalName(sig), PID: c.PID()})
	case ends:
		e.out.emit(event{Event: "signal", Signal: signalName(sig)})
		e.stop()
	default:
		e.out.emit(event{Event: "signal", Signal: signalName(sig), Reason: "ignored: no command runs"})
	}
}

// lead is Run's OnStartedLeading: it runs the term's command until the
// command exits or the term ends, whichever comes first. Run releases the
// key only after lead has returned, so the command is dead by then.
func (e *elector) lead(ctx context.Context, term *elect.Term) {
	elected := event{Event: "elected", Key: term.Key, Token: term.Token, Leader: &term.Identity}
	if len(e.o.command) == 0 {
		// As etcdctl elect, print the leader key and the proposal.
		e.out.emit(elected, term.Key, term.Identity)
		<-ctx.Done()
		e.steppedDown(ctx, term, "")
		return
	}
	e.mu.Lock()
	if e.stopping {
		e.mu.Unlock()
		return
	}
	ch, err := startChild(e.o.command, append(os.Environ(),
		"QUIETLOCK_KEY="+term.Key,
		fmt.Sprintf("QUIETLOCK_TOKEN=%d", term.Token)))
	if err != nil {
		code := startExitCode(err)
		e.exit = &code
		e.mu.Unlock()
		e.out.fail(fmt.Errorf("cannot run %s: %w", e.o.command[0], err))
		e.stop()
		return
	}
	e.child = ch
	e.mu.Unlock()
	// Print nothing else: stdout is the command's.
	e.out.emit(elected)
	e.out.emit(event{Event: "started", Key: term.Key, Token: term.Token, PID: ch.PID()})

	select {
	case <-ch.Done():
		code := ch.ExitCode()
		// Whatever it left running in its group must not outlive the term.
		ch.Stop(e.o.killGrace)
		e.mu.Lock()
		e.child, e.exit = nil, &code
		e.mu.Unlock()
		e.out.emit(event{Event: "exited", PID: ch.PID(), ExitCode: &code})
		// The command is over: resign at once, so that a standby takes over
		// without waiting for the lease to expire, and exit with its code.
		e.stop()
	case <-ctx.Done():
		e.steppedDown(ctx, term, ": stopping the command")
		ch.Stop(e.o.killGrace)
		code := ch.ExitCode()
		e.mu.Lock()
		e.child = nil
		stopping := e.stopping
		if stopping {
			e.exit = &code
		}
		e.mu.Unlock()
		e.out.emit(event{Event: "exited", PID: ch.PID(), ExitCode: &code, Signal: stopSignal(code)})
		if stopping {
			e.stop()
		}
	}
}

// steppedDown reports the end of a term; a loss, as opposed to a
// resignation, is a warning.
func (e *elector) steppedDown(ctx context.Context, term *elect.Term, then string) {
	reason := context.Cause(ctx)
	ev := event{Event: "stepped-down", Key: term.Key, Token: term.Token, Reason: reason.Error()}
	if errors.Is(reason, elect.ErrResigned) {
		e.out.emit(ev)
		return
	}
	e.out.warn(ev, fmt.Sprintf("leadership of %s lost (%v)%s", e.o.name, reason, then))
}

// stoppedLeading is Run's OnStoppedLeading, called once Run has released
// the key (or found it gone).
func (e *elector) stoppedLeading(term *elect.Term, reason error) {
	e.out.emit(event{Event: "released", Key: term.Key, Token: term.Token, Reason: reason.Error()})
}

// newLeader is Run's OnNewLeader; etcdctl elect prints nothing for it.
func (e *elector) newLeader(identity string) {
	e.out.emit(event{Event: "leader", Leader: &identity})
}
