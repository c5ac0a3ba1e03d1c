package main

import (
	"context"
	"os"
	"syscall"
)

// untilSignal returns a context that is cancelled when a signal arrives on
// sigs, for the phases in which a signal means "give up" (connecting,
// waiting for the lock), and stop, which stops watching sigs and returns the
// signal that arrived, or nil. It watches with one goroutine, which stop
// waits for; after stop, sigs belongs to the caller again and the context
// is cancelled.
func untilSignal(sigs <-chan os.Signal) (ctx context.Context, stop func() os.Signal) {
	ctx, cancel := context.WithCancel(context.Background())
	var got os.Signal
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case got = <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, func() os.Signal {
		cancel()
		<-done
		return got
	}
}

// exitSignal is the exit code of a process ended by sig, as shells report
// it: 128 + the signal's number.
func exitSignal(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return exitError
}

// signalName names sig for events: "SIGTERM".
func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGKILL:
		return "SIGKILL"
	}
	return sig.String()
}
