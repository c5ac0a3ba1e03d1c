//go:build unix && !linux

package main

import "syscall"

// setDeathSignal does nothing: only Linux can have a process killed when its
// parent dies. If quietlock is killed with SIGKILL, the command runs on.
func setDeathSignal(*syscall.SysProcAttr) {}
