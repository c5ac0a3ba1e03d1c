// Command primary-standby shows quietlock's election at work: nodes that
// elect one primary, standbys that wait without writing anything to etcd,
// and failovers.
//
// With no --endpoints it starts a real etcd in a temporary directory and
// runs --nodes nodes in this process; the primary resigns every
// --failover-every to show a handover. With --endpoints it runs one node
// against an existing etcd: start several, in several terminals, and stop
// the primary (Ctrl-C hands over at once; kill -9 hands over when its lease
// expires).
//
// Every 5 s a status line shows the store revision and the raft applied
// index, and how fast they grow: with --work-every 0 nothing at all is
// written while the roles are stable, however many standbys wait.
//
// With --http host:port it serves, on that address (port 0: any free port;
// an "http" line gives the address):
//
//   - /metrics: the runners' metrics (see elect.Run), each labelled with
//     node="<name>", in Prometheus's text format;
//   - /readyz: 200 while the node is primary, 503 otherwise (elect.ReadyLeader:
//     route traffic to the primary only);
//   - /healthz: 200 while the node is in touch with etcd, primary or standby,
//     503 once etcd has not answered it for a TTL (see elect.Health).
//
// /readyz and /healthz are the first node's: with --endpoints, this
// process's only node; in embedded mode, node-1. In embedded mode every node
// also has its own, /node-N/readyz and /node-N/healthz. Their body is one
// line of JSON with the node's view: leader, token, and how long ago etcd
// last answered. Between the Runs of a node (after each resignation) its
// endpoints answer 503 "not running" for a moment.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/quietlocktest"
)

// statusEvery is how often the status line is printed.
const statusEvery = 5 * time.Second

// reachTimeout bounds how long an etcd given with --endpoints may take to
// answer before the command gives up.
const reachTimeout = 5 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type config struct {
	endpoints     []string
	nodes         int
	name          string
	prefix        string
	ttl           time.Duration
	duration      time.Duration
	failoverEvery time.Duration
	workEvery     time.Duration
	json          bool
	http          string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("primary-standby", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	endpoints := fs.String("endpoints", "", "comma-separated etcd endpoints; empty: start an embedded etcd in a temp dir")
	fs.IntVar(&c.nodes, "nodes", 3, "with the embedded etcd: how many nodes to run in this process")
	host, _ := os.Hostname()
	fs.StringVar(&c.name, "name", fmt.Sprintf("%s-%d", host, os.Getpid()), "this node's name in --endpoints mode")
	fs.StringVar(&c.prefix, "prefix", "/quietlock/primary-standby", "election prefix")
	fs.DurationVar(&c.ttl, "ttl", 5*time.Second, "session TTL")
	fs.DurationVar(&c.duration, "duration", 0, "exit after this long; 0 runs until SIGINT/SIGTERM")
	fs.DurationVar(&c.failoverEvery, "failover-every", 10*time.Second, "embedded mode: the primary resigns this often, to show failover; 0 never")
	fs.DurationVar(&c.workEvery, "work-every", time.Second, "how often the primary does its fenced work write; 0 disables it")
	fs.BoolVar(&c.json, "json", false, "one JSON object per line instead of human-readable text")
	fs.StringVar(&c.http, "http", "", "serve /metrics, /readyz and /healthz on this address, e.g. :8080; empty: no HTTP")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "usage: primary-standby [flags]")
			fs.PrintDefaults()
		}
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case *endpoints == "" && c.nodes < 1:
		return nil, fmt.Errorf("--nodes must be at least 1, not %d", c.nodes)
	case c.prefix == "":
		return nil, errors.New("--prefix must not be empty")
	case c.name == "":
		return nil, errors.New("--name must not be empty")
	case c.ttl < time.Second || c.ttl%time.Second != 0:
		return nil, fmt.Errorf("--ttl must be a whole number of seconds, at least 1s, not %v", c.ttl)
	case c.duration < 0 || c.failoverEvery < 0 || c.workEvery < 0:
		return nil, errors.New("--duration, --failover-every and --work-every must not be negative")
	}
	if *endpoints != "" {
		for _, e := range strings.Split(*endpoints, ",") {
			if e = strings.TrimSpace(e); e != "" {
				c.endpoints = append(c.endpoints, e)
			}
		}
	}
	return c, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "primary-standby: %v (see -h)\n", err)
		return 2
	}
	if err := demo(cfg, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "primary-standby: %v\n", err)
		return 1
	}
	return 0
}

func demo(cfg *config, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}

	// Listen first, so that a bad address fails before anything starts.
	var ln net.Listener
	if cfg.http != "" {
		var err error
		if ln, err = net.Listen("tcp", cfg.http); err != nil {
			return fmt.Errorf("--http: %w", err)
		}
		defer ln.Close()
	}

	names := []string{cfg.name}
	if len(cfg.endpoints) == 0 {
		endpoint, stopEtcd, err := quietlocktest.StartInTempDir()
		if err != nil {
			return err
		}
		defer stopEtcd()
		cfg.endpoints = []string{endpoint}
		names = names[:0]
		for i := range cfg.nodes {
			names = append(names, fmt.Sprintf("node-%d", i+1))
		}
	} else {
		cfg.failoverEvery = 0 // one node per process: stop the process instead
	}

	out := &printer{w: stdout, json: cfg.json}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	statusCli, err := connect(ctx, cfg.endpoints)
	if err != nil {
		return err
	}
	defer statusCli.Close()

	// A node that cannot run ends the demo.
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	d := &cluster{cfg: cfg, out: out, log: log, fail: fail, reg: prometheus.NewRegistry()}
	var wg sync.WaitGroup
	for _, name := range names {
		cli, err := connect(ctx, cfg.endpoints)
		if err != nil {
			return err
		}
		defer cli.Close()
		n := &node{name: name, cli: cli, d: d}
		if ln != nil {
			n.health = elect.NewHealth(0)
		}
		d.nodes = append(d.nodes, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.loop(ctx)
		}()
	}
	if ln != nil {
		defer d.serve(ln)()
	}
	d.watch(ctx, statusCli, names[0])
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// connect returns a client of endpoints once etcd has answered a read, or
// an error within reachTimeout.
func connect(ctx context.Context, endpoints []string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: reachTimeout, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
	}
	rctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	if _, err := cli.Get(rctx, "health", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd at %s unreachable: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}

// cluster is the set of nodes this process runs.
type cluster struct {
	cfg   *config
	out   *printer
	log   *slog.Logger
	fail  context.CancelCauseFunc
	reg   *prometheus.Registry // the runners' metrics, served with --http
	nodes []*node

	mu      sync.Mutex
	primary *node // the node of this process that leads, if any
}

// watch prints the status line every statusEvery and, in embedded mode,
// makes the primary resign every --failover-every, until ctx ends.
func (d *cluster) watch(ctx context.Context, cli *clientv3.Client, who string) {
	if len(d.nodes) > 1 {
		who = "all"
	}
	status := time.NewTicker(statusEvery)
	defer status.Stop()
	var failover <-chan time.Time
	if d.cfg.failoverEvery > 0 {
		t := time.NewTicker(d.cfg.failoverEvery)
		defer t.Stop()
		failover = t.C
	}
	var last *snapshot
	for {
		select {
		case <-ctx.Done():
			return
		case <-failover:
			d.mu.Lock()
			p := d.primary
			d.mu.Unlock()
			if p != nil {
				p.resign()
			}
		case <-status.C:
			s, err := d.snapshot(ctx, cli)
			if err != nil {
				d.log.Warn("status", "err", err)
				continue
			}
			ev := event{Event: "status", Node: who, Revision: s.revision, RaftIndex: s.raftIndex, Counter: &s.counter}
			if last != nil {
				perMin := float64(time.Minute) / float64(s.at.Sub(last.at))
				r, e := int64(float64(s.revision-last.revision)*perMin+0.5), int64(float64(s.raftIndex-last.raftIndex)*perMin+0.5)
				ev.RevisionsPerMin, ev.RaftEntriesPerMin = &r, &e
			}
			d.out.print(ev)
			last = s
		}
	}
}

// serve serves /metrics and the nodes' /readyz and /healthz on ln (see the
// package comment) until the returned stop is called; stop shuts the server
// down and waits for it.
func (d *cluster) serve(ln net.Listener) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{}))
	mux.Handle("/readyz", d.nodes[0].health.ReadyHandler(elect.ReadyLeader))
	mux.Handle("/healthz", d.nodes[0].health.HealthHandler())
	who := d.nodes[0].name
	if len(d.nodes) > 1 {
		who = "all"
		for _, n := range d.nodes {
			mux.Handle("/"+n.name+"/readyz", n.health.ReadyHandler(elect.ReadyLeader))
			mux.Handle("/"+n.name+"/healthz", n.health.HealthHandler())
		}
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: reachTimeout}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			d.fail(fmt.Errorf("http: %w", err))
		}
	}()
	d.out.print(event{Event: "http", Node: who, Addr: ln.Addr().String()})
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}
}

type snapshot struct {
	at                time.Time
	revision, counter int64
	raftIndex         uint64
}

func (d *cluster) snapshot(ctx context.Context, cli *clientv3.Client) (*snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	st, err := status(ctx, cli)
	if err != nil {
		return nil, err
	}
	s := &snapshot{at: time.Now(), revision: st.Header.Revision, raftIndex: st.RaftAppliedIndex}
	resp, err := cli.Get(ctx, counterKey(d.cfg.prefix))
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) > 0 {
		s.counter, _ = strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
	}
	return s, nil
}

// counterKey is the primary's work: a counter outside the election prefix.
func counterKey(prefix string) string { return prefix + "-counter" }

// node is one candidate, with its own client and session.
type node struct {
	name   string
	cli    *clientv3.Client
	d      *cluster
	health *elect.Health // with --http; nil otherwise

	mu      sync.Mutex
	stopRun context.CancelFunc
}

// resign makes the node's current Run resign; the node then campaigns again
// in a new Run.
func (n *node) resign() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopRun != nil {
		n.stopRun()
	}
}

// loop runs the node until ctx ends: one elect.Run at a time, a new one
// after each requested resignation.
func (n *node) loop(ctx context.Context) {
	for ctx.Err() == nil {
		rctx, stop := context.WithCancel(ctx)
		n.mu.Lock()
		n.stopRun = stop
		n.mu.Unlock()
		opts := []elect.Option{elect.WithTTL(n.d.cfg.ttl), elect.WithLogger(n.d.log)}
		if n.health != nil {
			// Each node's metrics apart, though they share the prefix.
			reg := prometheus.WrapRegistererWith(prometheus.Labels{"node": n.name}, n.d.reg)
			opts = append(opts, elect.WithHealth(n.health), elect.WithRegisterer(reg))
		}
		err := elect.Run(rctx, n.cli, n.d.cfg.prefix, n.name, elect.Callbacks{
			OnStartedLeading: n.lead,
			OnStoppedLeading: n.stepDown,
			OnNewLeader:      n.newLeader,
		}, opts...)
		stop()
		if err != nil {
			n.d.fail(fmt.Errorf("%s: %w", n.name, err))
			return
		}
	}
}

func (n *node) newLeader(leader string) {
	if leader != n.name {
		n.d.out.print(event{Event: "standby", Node: n.name, Leader: &leader})
	}
}

// lead is the primary's work: a fenced increment of the counter every
// --work-every, until the term ends. It reports the end of the term as soon
// as the term's context is cancelled, before Run releases the key to a
// successor, so the output shows the old primary stepping down before the
// new one starts.
func (n *node) lead(ctx context.Context, term *elect.Term) {
	n.d.mu.Lock()
	n.d.primary = n
	n.d.mu.Unlock()
	n.d.out.print(event{Event: "primary", Node: n.name, Token: term.Token})
	defer func() {
		n.d.mu.Lock()
		if n.d.primary == n {
			n.d.primary = nil
		}
		n.d.mu.Unlock()
		n.d.out.print(event{Event: "stepped-down", Node: n.name, Token: term.Token, Reason: context.Cause(ctx).Error()})
	}()
	var work <-chan time.Time
	if n.d.cfg.workEvery > 0 {
		t := time.NewTicker(n.d.cfg.workEvery)
		defer t.Stop()
		work = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-work:
			if _, err := n.work(ctx, term); err != nil && ctx.Err() == nil {
				n.d.log.Warn("work", "node", n.name, "err", err)
			}
		}
	}
}

// work increments the counter in a transaction that etcd applies only
// while term lasts. It reports whether etcd applied it.
func (n *node) work(ctx context.Context, term *elect.Term) (bool, error) {
	key := counterKey(n.d.cfg.prefix)
	resp, err := n.cli.Get(ctx, key)
	if err != nil {
		return false, err
	}
	var v, mod int64
	if len(resp.Kvs) > 0 {
		v, _ = strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
		mod = resp.Kvs[0].ModRevision
	}
	tresp, err := term.Txn(ctx, clientv3.Compare(clientv3.ModRevision(key), "=", mod)).
		Then(clientv3.OpPut(key, strconv.FormatInt(v+1, 10))).
		Commit()
	if err != nil {
		return false, err
	}
	return tresp.Succeeded, nil
}

// stepDown runs after the term's key is released (or found gone).
func (n *node) stepDown(term *elect.Term, reason error) {
	if errors.Is(reason, elect.ErrResigned) {
		n.d.out.print(event{Event: "resigned", Node: n.name, Token: term.Token})
	}
	if n.d.cfg.workEvery == 0 {
		return
	}
	// Show the fence at work: the same write with the ended term's token is
	// refused by etcd.
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	if applied, err := n.work(ctx, term); err == nil && !applied {
		n.d.out.print(event{Event: "stale-write-refused", Node: n.name, Token: term.Token})
	}
}

// event is one line of output.
type event struct {
	Time              string  `json:"time"`
	Event             string  `json:"event"`
	Node              string  `json:"node"`
	Token             int64   `json:"token,omitempty"`
	Leader            *string `json:"leader,omitempty"`
	Reason            string  `json:"reason,omitempty"`
	Revision          int64   `json:"revision,omitempty"`
	RaftIndex         uint64  `json:"raft_index,omitempty"`
	RevisionsPerMin   *int64  `json:"revisions_per_min,omitempty"`
	RaftEntriesPerMin *int64  `json:"raft_entries_per_min,omitempty"`
	Counter           *int64  `json:"counter,omitempty"`
	Addr              string  `json:"addr,omitempty"`
}

// printer writes one line per event to stdout, as text or JSON.
type printer struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
}

func (p *printer) print(ev event) {
	now := time.Now()
	ev.Time = now.Format(time.RFC3339Nano)
	var line []byte
	if p.json {
		line, _ = json.Marshal(ev)
	} else {
		line = []byte(now.Format("15:04:05.000 ") + ev.text())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.w.Write(append(line, '\n'))
}

func (ev event) text() string {
	switch ev.Event {
	case "primary":
		return fmt.Sprintf("%s is primary (token %d)", ev.Node, ev.Token)
	case "standby":
		if *ev.Leader == "" {
			return fmt.Sprintf("%s standby, no primary", ev.Node)
		}
		return fmt.Sprintf("%s standby, primary is %s", ev.Node, *ev.Leader)
	case "stepped-down":
		return fmt.Sprintf("%s stepped down (token %d): %s", ev.Node, ev.Token, ev.Reason)
	case "resigned":
		return fmt.Sprintf("%s resigned", ev.Node)
	case "http":
		return fmt.Sprintf("serving /metrics, /readyz and /healthz on http://%s", ev.Addr)
	case "stale-write-refused":
		return fmt.Sprintf("%s: etcd refused a write with the old token %d", ev.Node, ev.Token)
	case "status":
		s := fmt.Sprintf("status: store revision %d, raft applied index %d", ev.Revision, ev.RaftIndex)
		if ev.RevisionsPerMin != nil {
			s = fmt.Sprintf("status: store revision %d (%+d/min), raft applied index %d (%+d/min)",
				ev.Revision, *ev.RevisionsPerMin, ev.RaftIndex, *ev.RaftEntriesPerMin)
		}
		return s + fmt.Sprintf(", work counter %d", *ev.Counter)
	}
	return ev.Event
}

// status reads etcd's Status from cli's first endpoint. etcd answers a
// write a moment before it counts the write's entry as applied, so it reads
// again until the applied index has caught up with the commit index: every
// write already answered is then counted.
func status(ctx context.Context, cli *clientv3.Client) (*clientv3.StatusResponse, error) {
	ep := strings.TrimPrefix(strings.TrimPrefix(cli.Endpoints()[0], "http://"), "https://")
	for {
		st, err := cli.Status(ctx, ep)
		if err != nil || st.RaftAppliedIndex >= st.RaftIndex {
			return st, err
		}
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
