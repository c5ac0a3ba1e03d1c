//go:build !unix

package main

import (
	"errors"
	"os"
	"time"
)

// errNoCommands is why quietlock cannot run a command here: process groups
// and their signals are Unix's.
var errNoCommands = errors.New("running a command needs a Unix system")

// child is a command quietlock runs; on this system it cannot run one.
type child struct{}

func startChild(argv, env []string) (*child, error) { return nil, errNoCommands }

func (c *child) PID() int               { return 0 }
func (c *child) Done() <-chan struct{}  { return nil }
func (c *child) ExitCode() int          { return exitError }
func (c *child) Signal(os.Signal)       {}
func (c *child) Stop(time.Duration)     {}
func lookCommand([]string) (int, error) { return exitCannotRun, errNoCommands }
func startExitCode(error) int           { return exitCannotRun }
