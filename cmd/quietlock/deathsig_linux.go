package main

import "syscall"

// setDeathSignal makes the kernel send SIGKILL to the command's first
// process if quietlock dies (kill -9, out of memory), so that the command
// does not run on after the lock it ran under is released by the lease's
// expiry. The kernel sends it when the thread that started the command
// exits; the Go runtime keeps its threads for the life of the process,
// since quietlock locks no goroutine to a thread.
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
