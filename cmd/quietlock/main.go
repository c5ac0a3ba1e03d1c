package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit codes. A command run by quietlock passes its own exit code on, so
// these are distinct from the command's only when no command runs; with
// --json the events say which is which.
const (
	exitOK      = 0
	exitError   = 1 // etcd unreachable, refused a request, or another runtime error
	exitUsage   = 2 // bad flags or arguments
	exitHeld    = 3 // lock --try: the lock is held elsewhere
	exitTimeout = 4 // lock --timeout: not acquired in time
	exitLost    = 5 // the lock was lost while held (the command, if any, was stopped)

	exitCannotRun = 126 // the command was found but could not be started
	exitNotFound  = 127 // the command was not found
)

func main() {
	// Registered before anything else, so that no signal quietlock handles
	// kills it before it has released what it holds. Buffered: signal
	// delivery does not block, and a burst must not be lost.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	code := run(os.Args[1:], os.Stdout, os.Stderr, sigs)
	signal.Stop(sigs)
	os.Exit(code)
}

const usage = `quietlock runs a command on one machine at a time, with a lock or an
election on etcd whose waiters write nothing to etcd.

Usage:
  quietlock lock [flags] NAME [COMMAND [ARGS...]]
  quietlock elect [flags] NAME [PROPOSAL] [-- COMMAND [ARGS...]]
  quietlock elect -l [flags] NAME

Run 'quietlock lock -h' or 'quietlock elect -h' for the flags.
`

// run runs quietlock with args (without the program name) and returns the
// exit code. sigs delivers the signals quietlock handles.
func run(args []string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "quietlock: missing subcommand: lock or elect (see quietlock -h)")
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	case "lock":
		o, err := parseLock(args[1:], stdout)
		if errors.Is(err, errHelpShown) {
			return exitOK
		}
		if err != nil {
			return usageError(stderr, "lock", err)
		}
		return runLock(o, newPrinter(stdout, stderr, o.json, o.name), sigs)
	case "elect":
		o, err := parseElect(args[1:], stdout)
		if errors.Is(err, errHelpShown) {
			return exitOK
		}
		if err != nil {
			return usageError(stderr, "elect", err)
		}
		return runElect(o, newPrinter(stdout, stderr, o.json, o.name), sigs)
	default:
		fmt.Fprintf(stderr, "quietlock: unknown subcommand %q: lock or elect (see quietlock -h)\n", args[0])
		return exitUsage
	}
}

// usageError reports a usage error on one line and returns exitUsage.
func usageError(stderr io.Writer, sub string, err error) int {
	fmt.Fprintf(stderr, "quietlock %s: %s (see quietlock %s -h)\n", sub, oneLine(err.Error()), sub)
	return exitUsage
}

// oneLine makes s fit on one line: an error from etcd or gRPC can span
// several.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
