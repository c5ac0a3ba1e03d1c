package quietlocktest

import (
	"net"
	"strings"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on a loopback port in front of an etcd endpoint, for
// tests that cut one client off from the server.
//
// Proxy is safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	state  proxyState
	gate   chan struct{} // closed while traffic flows; replaced by Blackhole
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

type proxyState int

const (
	flowing proxyState = iota
	dropping
	blackholed
)

// NewProxy starts a proxy to endpoint (http://host:port) and stops it when
// the test ends. Clients reach it at [Proxy.Endpoint].
func NewProxy(t testing.TB, endpoint string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	close(gate)
	p := &Proxy{ln: ln, target: strings.TrimPrefix(endpoint, "http://"), gate: gate, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Endpoint is the proxy's client URL.
func (p *Proxy) Endpoint() string { return "http://" + p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.closed || p.state == dropping {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	defer p.forget(c)
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.forget(up)
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { p.pipe(up, c); done <- struct{}{} }()
	go func() { p.pipe(c, up); done <- struct{}{} }()
	// Either direction ending ends both: closing the sockets unblocks the other copy.
	<-done
	c.Close()
	up.Close()
	<-done
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.state == dropping {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) forget(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// pipe copies src to dst. While the proxy is black-holed it holds what it
// has read instead of writing it, so bytes are delayed, never lost, and
// TCP flow control stalls the sender as a real partition would.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate := p.gate
			p.mu.Unlock()
			<-gate
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Drop closes every connection through the proxy and refuses new ones until
// [Proxy.Heal].
func (p *Proxy) Drop() {
	p.mu.Lock()
	p.setFlowingLocked()
	p.state = dropping
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// Blackhole stops forwarding bytes in both directions without closing
// anything, until [Proxy.Heal]: connections stay open and silent.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != blackholed {
		p.state = blackholed
		p.gate = make(chan struct{})
	}
}

// Heal lets traffic flow again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setFlowingLocked()
}

func (p *Proxy) setFlowingLocked() {
	if p.state == blackholed {
		close(p.gate)
	}
	p.state = flowing
}

// Close stops the proxy and closes every connection through it.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.setFlowingLocked()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}
