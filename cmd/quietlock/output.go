package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// event is one thing that happened, printed as one JSON line with --json.
// Fields are omitted when the event has none.
type event struct {
	Time  string `json:"time"`  // RFC 3339, nanoseconds
	Event string `json:"event"` // see doc.go for the list
	Name  string `json:"name"`  // the lock or election name
	// Key is the held, owning or leader key.
	Key string `json:"key,omitempty"`
	// Leader is the leader's value (its proposal); "" when there is none.
	Leader *string `json:"leader,omitempty"`
	// Token is the fencing token: the key's create revision.
	Token    int64  `json:"token,omitempty"`
	PID      int    `json:"pid,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// printer prints events: with --json every event as a JSON line on stdout;
// otherwise only what etcdctl prints on stdout, and warnings on stderr. It
// is safe for concurrent use: lines are never interleaved.
type printer struct {
	mu     sync.Mutex
	stdout io.Writer
	stderr io.Writer
	json   bool
	name   string
}

func newPrinter(stdout, stderr io.Writer, json bool, name string) *printer {
	return &printer{stdout: stdout, stderr: stderr, json: json, name: name}
}

// emit prints ev as JSON with --json; otherwise it prints lines on stdout,
// one per element, as etcdctl's simple output does (a key, then its value).
func (p *printer) emit(ev event, lines ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		p.writeJSON(ev)
		return
	}
	for _, l := range lines {
		fmt.Fprintln(p.stdout, l)
	}
}

// warn prints ev as JSON with --json, and otherwise msg on stderr, on one
// line. It is for what an operator must hear of (a lost lock), not for
// routine events.
func (p *printer) warn(ev event, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		p.writeJSON(ev)
		return
	}
	fmt.Fprintf(p.stderr, "quietlock: %s\n", oneLine(msg))
}

// fail prints err on stderr, on one line, and returns exitError.
func (p *printer) fail(err error) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.stderr, "quietlock: %s\n", oneLine(err.Error()))
	return exitError
}

func (p *printer) writeJSON(ev event) {
	ev.Time = time.Now().Format(time.RFC3339Nano)
	ev.Name = p.name
	// An event has only strings and numbers: Marshal cannot fail.
	b, _ := json.Marshal(ev)
	b = append(b, '\n')
	p.stdout.Write(b)
}

func ptr[T any](v T) *T { return &v }
