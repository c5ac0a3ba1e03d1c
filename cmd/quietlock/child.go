//go:build unix

package main

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// killWait bounds how long stop waits for the command to be reaped after
// SIGKILL. A killed process runs no more code of its own; only one stuck in
// the kernel (an unkillable I/O wait) takes longer to disappear.
const killWait = 5 * time.Second

// pollEvery is how often stop checks whether the process group is empty.
const pollEvery = 10 * time.Millisecond

// child is a command that quietlock runs while it holds the lock or leads,
// in a process group of its own, so that signals and the final SIGKILL
// reach everything it started, not just its first process. (A process that
// leaves the group, by setsid for one, is beyond reach.) On Linux the
// command's first process also gets SIGKILL if quietlock itself dies.
//
// A child's methods are safe for concurrent use.
type child struct {
	cmd  *exec.Cmd
	pgid int           // = the first process's pid
	done chan struct{} // closed by the waiting goroutine once the command has exited and been reaped
}

// startChild starts argv with env, sharing quietlock's stdin, stdout and
// stderr. One goroutine waits for the command; it ends when the command
// exits, and [child.Done] reports that.
func startChild(argv, env []string) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	setDeathSignal(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, pgid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		// The exit status is read from cmd.ProcessState; a non-zero status
		// is not an error here.
		_ = cmd.Wait()
	}()
	return c, nil
}

// PID returns the pid of the command's first process.
func (c *child) PID() int { return c.pgid }

// Done returns a channel that is closed once the command's first process
// has exited and been reaped. Nothing is sent on it.
func (c *child) Done() <-chan struct{} { return c.done }

// ExitCode returns the command's exit code, or 128 + the signal's number
// if it died of a signal, as a shell reports it. Before Done is closed, that
// is for a command that [child.Stop] could not see die (stuck in the kernel
// after SIGKILL), it returns the code of death by SIGKILL.
func (c *child) ExitCode() int {
	select {
	case <-c.done:
	default:
		return 128 + int(syscall.SIGKILL)
	}
	ps := c.cmd.ProcessState
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// Signal forwards sig to the command's process group, while its first
// process runs.
func (c *child) Signal(sig os.Signal) {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return
	}
	select {
	case <-c.done:
		// The group's id may soon be reused: stop only signals it with a
		// check that the group still has members.
	default:
		_ = syscall.Kill(-c.pgid, s)
	}
}

// Stop ends the command's process group and returns once its first process
// has been reaped: SIGTERM to the group, then SIGKILL to the group if
// anything of it is left after grace (at once when grace is 0). When the
// command has already exited, Stop ends whatever it left running in its
// group the same way, and returns at once if nothing is left. A process of
// the group that has died but that nobody reaps (its parent gone, under an
// init that does not reap) counts as left: it only costs the grace.
func (c *child) Stop(grace time.Duration) {
	if c.gone() {
		return
	}
	if grace > 0 {
		_ = c.kill(syscall.SIGTERM)
		if c.wait(grace, true) {
			return
		}
	}
	_ = c.kill(syscall.SIGKILL)
	// After SIGKILL nothing of the group runs code of its own again; wait
	// only for the first process, whose exit status the caller wants.
	c.wait(killWait, false)
}

// kill sends sig to the process group unless it is known to be empty.
func (c *child) kill(sig syscall.Signal) error {
	if c.gone() {
		return nil
	}
	err := syscall.Kill(-c.pgid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// wait waits up to d for the first process to be reaped and, with group,
// for the process group to be empty too. It reports whether that happened.
func (c *child) wait(d time.Duration, group bool) bool {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	if !group {
		select {
		case <-c.done:
			return true
		case <-timeout.C:
			return false
		}
	}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	done := c.done
	for {
		select {
		case <-done:
			done = nil // closed: poll from now on
		case <-tick.C:
		case <-timeout.C:
			return c.gone()
		}
		if c.gone() {
			return true
		}
	}
}

// gone reports whether the first process has been reaped and no process is
// left in the group. The group's id is the first process's pid, which the
// kernel does not hand out again while a process of the group exists.
func (c *child) gone() bool {
	select {
	case <-c.done:
	default:
		return false
	}
	return errors.Is(syscall.Kill(-c.pgid, 0), syscall.ESRCH)
}

// lookCommand checks, before anything is acquired, that argv[0] can be
// run, and returns the exit code a shell would give if not: 127 when it is
// not found, 126 when it is not executable.
func lookCommand(argv []string) (int, error) {
	if _, err := exec.LookPath(argv[0]); err != nil {
		return startExitCode(err), err
	}
	return exitOK, nil
}

// startExitCode is the exit code for a command that could not be started.
func startExitCode(err error) int {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
		return exitNotFound
	}
	return exitCannotRun
}
