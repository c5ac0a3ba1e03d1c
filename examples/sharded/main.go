// Command sharded shows package shard at work: many shards led by a few
// nodes, each node with one lease whatever the number of shards it leads,
// the leaders balanced across the nodes, and ownership moving as nodes join,
// leave and crash.
//
// With no --endpoints it starts a real etcd in a temporary directory and
// runs --nodes nodes in this process, each a shard.Runner with its own etcd
// client, for --shards shards. Unless --script=false, it then tells a story,
// one event at a time, each once the leaders have settled (every shard led,
// every node leading its share) and held still for --step:
//
//  1. a new node joins, and the others hand it its share;
//  2. the oldest node leaves gracefully: it hands its shards over and revokes
//     its lease, so the others take them at once;
//  3. the next node crashes: its client is closed without revoking its
//     lease, and its shards are led elsewhere once etcd expires the lease,
//     within --ttl.
//
// With --endpoints it runs one node, --name, against an existing etcd:
// start several, in several terminals, with the same --shards, and stop
// them (Ctrl-C hands over at once; kill -9 hands over when the lease
// expires).
//
// It prints a line each time a shard gets a new leader ("s03: node-1 ->
// node-2 (token 57)"), the table of who leads what each time the leaders
// settle, and every --status-every a status line: the store revision and
// the raft applied index, read with etcd's Status call (which writes
// nothing), and how much they grew since the leaders last settled and since
// the start. While the leaders are stable nothing at all is written: +0
// revisions, +0 raft entries, however many shards and nodes.
//
// Each leader writes its fencing token to the shard's data key, prefix +
// "-data/" + shard, in a transaction fenced with its term (elect.Term.Txn),
// once when its term starts; after the term ends it tries the same write
// again with the old term, and etcd refuses it. The status line counts
// both. With --endpoints, the table shows the leaders this node sees; nodes
// that lead nothing are not in it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/quietlocktest"
	"github.com/quietlock/quietlock/shard"
)

// reachTimeout bounds how long etcd may take to answer a request of the
// demo's own (a connection check, a Status call, a fenced write) before the
// demo gives up on it.
const reachTimeout = 5 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type config struct {
	endpoints   []string
	shards      int
	nodes       int
	name        string
	prefix      string
	ttl         time.Duration
	duration    time.Duration
	script      bool
	step        time.Duration
	statusEvery time.Duration
	json        bool
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("sharded", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	endpoints := fs.String("endpoints", "", "comma-separated etcd endpoints; empty: start an embedded etcd in a temp dir")
	fs.IntVar(&c.shards, "shards", 12, "how many shards")
	fs.IntVar(&c.nodes, "nodes", 3, "with the embedded etcd: how many nodes to start in this process")
	host, _ := os.Hostname()
	fs.StringVar(&c.name, "name", fmt.Sprintf("%s-%d", host, os.Getpid()), "this node's name in --endpoints mode")
	fs.StringVar(&c.prefix, "prefix", "/quietlock/sharded", "the runners' prefix")
	fs.DurationVar(&c.ttl, "ttl", 2*time.Second, "lease TTL, whole seconds (etcd grants at least 2s with its default timing)")
	fs.DurationVar(&c.duration, "duration", 0, "exit after this long; 0 runs until SIGINT/SIGTERM")
	fs.BoolVar(&c.script, "script", true, "with the embedded etcd: make a node join, then one leave, then one crash")
	fs.DurationVar(&c.step, "step", 4*time.Second, "with --script: how long the leaders hold still before the next event")
	fs.DurationVar(&c.statusEvery, "status-every", 2*time.Second, "how often to print the status line")
	fs.BoolVar(&c.json, "json", false, "one JSON object per line instead of human-readable text")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "usage: sharded [flags]")
			fs.PrintDefaults()
		}
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.shards < 1:
		return nil, fmt.Errorf("--shards must be at least 1, not %d", c.shards)
	case *endpoints == "" && c.nodes < 1:
		return nil, fmt.Errorf("--nodes must be at least 1, not %d", c.nodes)
	case c.prefix == "":
		return nil, errors.New("--prefix must not be empty")
	case c.name == "":
		return nil, errors.New("--name must not be empty")
	case c.ttl < time.Second || c.ttl%time.Second != 0:
		return nil, fmt.Errorf("--ttl must be a whole number of seconds, at least 1s, not %v", c.ttl)
	case c.duration < 0:
		return nil, errors.New("--duration must not be negative")
	case c.step <= 0 || c.statusEvery <= 0:
		return nil, errors.New("--step and --status-every must be positive")
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
		fmt.Fprintf(stderr, "sharded: %v (see -h)\n", err)
		return 2
	}
	if err := demo(cfg, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "sharded: %v\n", err)
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

	embedded := len(cfg.endpoints) == 0
	if embedded {
		endpoint, stopEtcd, err := quietlocktest.StartInTempDir()
		if err != nil {
			return err
		}
		defer stopEtcd()
		cfg.endpoints = []string{endpoint}
	} else {
		cfg.script = false // one node per process: start and stop processes instead
	}
	statusCli, err := connect(ctx, cfg.endpoints)
	if err != nil {
		return err
	}
	defer statusCli.Close()

	// A node that cannot run ends the demo.
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	d := &cluster{
		cfg: cfg, embedded: embedded, cli: statusCli, fail: fail,
		out:     &printer{w: stdout, json: cfg.json},
		log:     slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		changed: make(chan struct{}, 1),
		owner:   map[string]string{}, prev: map[string]string{}, tokens: map[string]int64{},
		live: map[string]bool{},
	}
	width := max(2, len(strconv.Itoa(cfg.shards)))
	for i := range cfg.shards {
		d.shards = append(d.shards, fmt.Sprintf("s%0*d", width, i+1))
	}
	start, err := d.readStatus(ctx)
	if err != nil {
		return err
	}
	d.start = start
	ev := event{Event: "etcd", Endpoint: cfg.endpoints[0], Embedded: embedded, Shards: cfg.shards, TTL: cfg.ttl.String(), Revision: start.revision, RaftIndex: start.raftIndex}
	if embedded {
		ev.Nodes = cfg.nodes
	} else {
		ev.Node = cfg.name
	}
	d.out.print(ev)

	// Every node's Run ends when ctx does: on every path, end them and
	// wait for them before etcd stops.
	defer func() {
		fail(nil)
		d.wg.Wait()
	}()
	if embedded {
		for i := range cfg.nodes {
			if err := d.startNode(ctx, fmt.Sprintf("node-%d", i+1), ""); err != nil {
				return err
			}
		}
	} else if err := d.startNode(ctx, cfg.name, ""); err != nil {
		return err
	}
	d.watch(ctx)
	d.wg.Wait()
	d.stopped()
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

// cluster is the nodes this process runs, and what it knows of the
// shards' leaders.
type cluster struct {
	cfg      *config
	embedded bool
	cli      *clientv3.Client // for Status calls and the final count of keys
	out      *printer
	log      *slog.Logger
	fail     context.CancelCauseFunc
	shards   []string
	start    status // etcd's counters before the first node started
	changed  chan struct{}
	wg       sync.WaitGroup // the nodes' Runs

	mu sync.Mutex
	// owner is each shard's leader now ("" or absent: none). In embedded
	// mode every node is in this process, and owner follows their terms
	// exactly; with --endpoints it is what this process's node reports
	// through OnNewLeader.
	owner   map[string]string
	prev    map[string]string // each shard's last leader, for the "from" of a move
	tokens  map[string]int64  // each shard's latest token seen (embedded mode)
	nodes   []*node           // in the order they started
	live    map[string]bool   // nodes started and not stopped
	changes int64             // leaders started and stopped, nodes joined and gone
	writes  int64             // fenced writes started
	pending int               // fenced writes started or due, and not done
	applied int64             // fenced writes that etcd applied
	refused int64             // writes with an ended term that etcd refused
}

// state is what decides whether the leaders have settled. Two equal states
// read before and after a Status call mean that the demo wrote nothing in
// between and no leader changed.
type state struct {
	changes, writes int64
	pending         int
	settled         bool // every shard led, every node its share, no write pending
}

func (d *cluster) state() state {
	d.mu.Lock()
	defer d.mu.Unlock()
	return state{changes: d.changes, writes: d.writes, pending: d.pending, settled: d.balancedLocked() && d.pending == 0}
}

// balancedLocked reports whether every shard has a leader and each node
// leads floor(N/M) or ceil(N/M) of the N shards. The M nodes are those of
// this process in embedded mode; with --endpoints, this node and the nodes
// seen leading.
func (d *cluster) balancedLocked() bool {
	led := d.ledLocked()
	members := maps.Clone(d.live)
	if !d.embedded {
		for n := range led {
			members[n] = true
		}
	}
	if len(members) == 0 {
		return false
	}
	lo := len(d.shards) / len(members)
	hi := (len(d.shards) + len(members) - 1) / len(members)
	total := 0
	for n, s := range led {
		if !members[n] {
			return false
		}
		total += len(s)
	}
	for n := range members {
		if c := len(led[n]); c < lo || c > hi {
			return false
		}
	}
	return total == len(d.shards)
}

// ledLocked returns the shards each node leads, in order.
func (d *cluster) ledLocked() map[string][]string {
	led := map[string][]string{}
	for _, s := range d.shards {
		if o := d.owner[s]; o != "" {
			led[o] = append(led[o], s)
		}
	}
	return led
}

// poke tells watch that the state changed.
func (d *cluster) poke() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// watch prints the status line every --status-every and the table of
// leaders each time they settle, and plays the script, until ctx ends.
func (d *cluster) watch(ctx context.Context) {
	tick := time.NewTicker(d.cfg.statusEvery)
	defer tick.Stop()
	steps := []func(context.Context){d.join, d.leave, d.crash}
	if !d.cfg.script {
		steps = nil
	}
	next := 0
	step := time.NewTimer(time.Hour)
	step.Stop()
	defer step.Stop()
	tabled := int64(-1) // the changes counter when the table was last printed
	var settled *status // at the last settling
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			d.printStatus(ctx, settled)
			continue
		case <-step.C:
			steps[next](ctx)
			next++
			// Print the table again once the leaders settle, even if the
			// step was skipped and changed nothing.
			tabled = -1
		case <-d.changed:
		}
		s := d.state()
		if !s.settled || s.changes == tabled {
			continue
		}
		tabled = s.changes
		d.printLeaders()
		settled = d.printStatus(ctx, nil)
		switch {
		case next < len(steps):
			step.Reset(d.cfg.step)
		case next == len(steps) && steps != nil:
			next++
			d.out.print(event{Event: "script-done"})
		}
	}
}

// status is etcd's counters at one moment, with the state of the demo
// around the moment.
type status struct {
	revision  int64
	raftIndex uint64
	state     state
}

func (d *cluster) readStatus(ctx context.Context) (status, error) {
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	before := d.state()
	st, err := etcdStatus(ctx, d.cli)
	if err != nil {
		return status{}, fmt.Errorf("etcd status: %w", err)
	}
	s := status{revision: st.Header.Revision, raftIndex: st.RaftAppliedIndex, state: d.state()}
	if s.state != before {
		s.state.settled = false
	}
	return s, nil
}

// printStatus prints the status line: etcd's counters, and their growth
// since start and, if the leaders have not changed since they settled at
// settled (nil: now), since then. It returns the status read, or nil.
func (d *cluster) printStatus(ctx context.Context, settled *status) *status {
	s, err := d.readStatus(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn("status", "err", err)
		}
		return nil
	}
	d.mu.Lock()
	applied, refused := d.applied, d.refused
	d.mu.Unlock()
	ev := event{
		Event: "status", Revision: s.revision, RaftIndex: s.raftIndex,
		Changes: s.state.changes, Writes: s.state.writes,
		Applied: applied, Refused: refused,
		SinceStart: &growth{Revisions: s.revision - d.start.revision, RaftEntries: int64(s.raftIndex - d.start.raftIndex)},
	}
	if settled == nil && s.state.settled {
		settled = &s
	}
	// Settled only in the state of the last settling: a tick can come
	// between a new settling and its table, and that line would otherwise
	// claim a settling it has no counts for.
	if settled != nil && s.state.settled && s.state == settled.state {
		ev.Settled = true
		ev.SinceSettled = &growth{Revisions: s.revision - settled.revision, RaftEntries: int64(s.raftIndex - settled.raftIndex)}
	}
	d.out.print(ev)
	return &s
}

// printLeaders prints the table of who leads what.
func (d *cluster) printLeaders() {
	d.mu.Lock()
	led := d.ledLocked()
	for n := range d.live {
		if led[n] == nil {
			led[n] = []string{}
		}
	}
	d.mu.Unlock()
	d.out.print(event{Event: "leaders", Leaders: led, Shards: len(d.shards)})
}

// stopped reports, in embedded mode, what the nodes left under the prefix
// once they have all stopped: nothing, unless a crashed node's lease has
// not expired yet.
func (d *cluster) stopped() {
	ev := event{Event: "stopped", Node: d.cfg.name}
	if d.embedded {
		ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
		defer cancel()
		resp, err := d.cli.Get(ctx, d.cfg.prefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			d.log.Warn("counting the keys left", "err", err)
			return
		}
		ev.Node, ev.Keys = "", &resp.Count
	}
	d.out.print(ev)
}

// join starts a new node (a scripted event).
func (d *cluster) join(ctx context.Context) {
	d.mu.Lock()
	name := fmt.Sprintf("node-%d", len(d.nodes)+1)
	d.mu.Unlock()
	if err := d.startNode(ctx, name, "the others hand it its share"); err != nil && ctx.Err() == nil {
		d.fail(err)
	}
}

// leave stops the oldest node gracefully (a scripted event): its Run ends,
// hands its shards over and revokes its lease.
func (d *cluster) leave(context.Context) {
	n := d.oldest(1)
	if n == nil {
		return
	}
	d.gone(n, "leave", "it hands its shards over and revokes its lease")
	n.stop()
}

// crash stops the oldest node as a crash would (a scripted event): its
// client is closed first, so that it cannot revoke its lease, and its keys
// stay until etcd expires the lease.
func (d *cluster) crash(context.Context) {
	n := d.oldest(2)
	if n == nil {
		d.out.print(event{Event: "skip", Reason: "no crash: it would leave no node"})
		return
	}
	d.gone(n, "crash", fmt.Sprintf("its client is closed without revoking its lease; its shards are led elsewhere once etcd expires it (TTL %v)", d.cfg.ttl))
	d.mu.Lock()
	n.crashed.Store(true)
	// Its writes with ended terms will not be made.
	d.pending -= len(n.due)
	clear(n.due)
	d.mu.Unlock()
	n.cli.Close()
	n.stop()
}

// oldest returns the node that started first among the live ones, if at
// least atLeast nodes are live.
func (d *cluster) oldest(atLeast int) *node {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.live) < atLeast {
		return nil
	}
	for _, n := range d.nodes {
		if d.live[n.name] {
			return n
		}
	}
	return nil
}

// gone announces that n leaves or crashes and counts it out.
func (d *cluster) gone(n *node, ev, why string) {
	d.mu.Lock()
	delete(d.live, n.name)
	d.changes++
	d.mu.Unlock()
	d.out.print(event{Event: ev, Node: n.name, Reason: why})
	d.poke()
}

// node is one process of the group: a shard.Runner with its own client.
type node struct {
	name    string
	cli     *clientv3.Client
	d       *cluster
	stop    context.CancelFunc // ends the node's Run
	crashed atomic.Bool
	due     map[string]bool // shards whose write with an ended term is due; guarded by d.mu
}

// startNode starts a node named name; its Run ends when ctx does, or when
// the node leaves or crashes.
func (d *cluster) startNode(ctx context.Context, name, why string) error {
	cli, err := connect(ctx, d.cfg.endpoints)
	if err != nil {
		return err
	}
	n := &node{name: name, cli: cli, d: d, due: map[string]bool{}}
	cb := shard.Callbacks{OnStartedLeading: n.lead, OnStoppedLeading: n.stepDown}
	if !d.embedded {
		cb.OnNewLeader = d.newLeader
	}
	r, err := shard.New(cli, d.cfg.prefix, name, cb, shard.WithTTL(d.cfg.ttl), shard.WithLogger(d.log))
	if err != nil {
		cli.Close()
		return err
	}
	if err := r.Add(d.shards...); err != nil {
		cli.Close()
		return err
	}
	rctx, stop := context.WithCancel(ctx)
	n.stop = stop
	d.mu.Lock()
	d.nodes = append(d.nodes, n)
	d.live[name] = true
	d.changes++
	d.mu.Unlock()
	d.out.print(event{Event: "join", Node: name, Reason: why})
	d.poke()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer cli.Close()
		defer stop()
		if err := r.Run(rctx); err != nil && !n.crashed.Load() {
			d.fail(fmt.Errorf("%s: %w", name, err))
		}
	}()
	return nil
}

// dataKey is shard's data: the token of the leader that wrote it last.
func (d *cluster) dataKey(sh string) string { return d.cfg.prefix + "-data/" + sh }

// lead is a leader's work: one fenced write of its token when the term
// starts. It records the start and the end of the term.
func (n *node) lead(ctx context.Context, sh string, term *elect.Term) {
	d := n.d
	d.startedLeading(n.name, sh, term.Token)
	ok, err := n.write(ctx, sh, term, fmt.Sprintf("%s token %d", n.name, term.Token))
	d.mu.Lock()
	d.pending--
	if ok {
		d.applied++
	}
	d.mu.Unlock()
	if err != nil && ctx.Err() == nil && !n.crashed.Load() {
		d.log.Warn("fenced write", "node", n.name, "shard", sh, "err", err)
	}
	d.poke()
	<-ctx.Done()
	// The runner hands the shard over only after this returns: the shard
	// is marked without leader before anyone else can start leading it.
	d.stoppedLeading(n, sh, context.Cause(ctx))
}

// stepDown shows the fence: the same write with the ended term is refused.
func (n *node) stepDown(sh string, term *elect.Term, _ error) {
	d := n.d
	d.mu.Lock()
	due := n.due[sh]
	delete(n.due, sh)
	if !due || n.crashed.Load() {
		// A crashed node's client is closed: it writes nothing more.
		if due {
			d.pending--
		}
		d.mu.Unlock()
		d.poke()
		return
	}
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	ok, err := n.write(ctx, sh, term, fmt.Sprintf("%s token %d, after its term", n.name, term.Token))
	d.mu.Lock()
	d.pending--
	switch {
	case err != nil:
	case ok:
		d.applied++
	default:
		d.refused++
	}
	d.mu.Unlock()
	if ok {
		// The term ended before etcd deleted its key (a crash, or a lease
		// about to expire): until etcd does, the token is still good.
		d.out.print(event{Event: "late-write", Node: n.name, Shard: sh, Token: term.Token})
	}
	d.poke()
}

// write puts value in sh's data key if term lasts, and reports whether
// etcd applied it.
func (n *node) write(ctx context.Context, sh string, term *elect.Term, value string) (bool, error) {
	resp, err := term.Txn(ctx).Then(clientv3.OpPut(n.d.dataKey(sh), value)).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// startedLeading records that node leads sh from token on, and that a
// fenced write is due.
func (d *cluster) startedLeading(node, sh string, token int64) {
	d.mu.Lock()
	d.writes++
	d.pending++
	if !d.embedded {
		d.mu.Unlock()
		return
	}
	cur, last := d.owner[sh], d.tokens[sh]
	d.owner[sh], d.tokens[sh] = node, token
	from := d.prev[sh]
	d.prev[sh] = node
	d.changes++
	d.mu.Unlock()
	if cur != "" || token <= last {
		// Never seen: terms of a shard do not overlap, and tokens grow.
		d.out.print(event{Event: "overlap", Node: node, Shard: sh, From: cur, Token: token, Reason: fmt.Sprintf("previous token %d", last)})
	}
	d.out.print(event{Event: "lead", Node: node, Shard: sh, From: from, Token: token})
}

// stoppedLeading records that n's term of sh ended, and that the write
// with the ended term is due, unless n crashed.
func (d *cluster) stoppedLeading(n *node, sh string, cause error) {
	d.mu.Lock()
	if !n.crashed.Load() {
		n.due[sh] = true
		d.writes++
		d.pending++
	}
	if !d.embedded {
		d.mu.Unlock()
		return
	}
	if d.owner[sh] == n.name {
		delete(d.owner, sh)
	}
	d.changes++
	d.mu.Unlock()
	d.out.print(event{Event: "unled", Node: n.name, Shard: sh, Reason: cause.Error()})
	d.poke()
}

// newLeader is the node's view of every shard's leader, with --endpoints.
func (d *cluster) newLeader(sh, identity string) {
	d.mu.Lock()
	from := d.prev[sh]
	if identity == "" {
		delete(d.owner, sh)
	} else {
		d.owner[sh], d.prev[sh] = identity, identity
	}
	d.changes++
	d.mu.Unlock()
	if identity != "" && identity != from {
		d.out.print(event{Event: "lead", Node: identity, Shard: sh, From: from})
	}
	d.poke()
}

// growth is how much etcd's counters grew over a while.
type growth struct {
	Revisions   int64 `json:"revisions"`
	RaftEntries int64 `json:"raft_entries"`
}

// event is one line of output.
type event struct {
	Time         string              `json:"time"`
	Event        string              `json:"event"`
	Node         string              `json:"node,omitempty"`
	Shard        string              `json:"shard,omitempty"`
	From         string              `json:"from,omitempty"`
	Token        int64               `json:"token,omitempty"`
	Reason       string              `json:"reason,omitempty"`
	Endpoint     string              `json:"endpoint,omitempty"`
	Embedded     bool                `json:"embedded,omitempty"`
	Shards       int                 `json:"shards,omitempty"`
	Nodes        int                 `json:"nodes,omitempty"`
	TTL          string              `json:"ttl,omitempty"`
	Leaders      map[string][]string `json:"leaders,omitempty"`
	Revision     int64               `json:"revision,omitempty"`
	RaftIndex    uint64              `json:"raft_index,omitempty"`
	Settled      bool                `json:"settled,omitempty"`
	Changes      int64               `json:"changes,omitempty"`
	Writes       int64               `json:"writes,omitempty"`
	Applied      int64               `json:"applied,omitempty"`
	Refused      int64               `json:"refused,omitempty"`
	SinceSettled *growth             `json:"since_settled,omitempty"`
	SinceStart   *growth             `json:"since_start,omitempty"`
	Keys         *int64              `json:"keys,omitempty"`
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
		text := ev.text()
		if text == "" {
			return
		}
		line = []byte(now.Format("15:04:05.000 ") + text)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.w.Write(append(line, '\n'))
}

// nodes is "1 node" or "n nodes".
func nodes(n int) string {
	if n == 1 {
		return "1 node"
	}
	return fmt.Sprintf("%d nodes", n)
}

func (ev event) text() string {
	or := func(s, dflt string) string {
		if s == "" {
			return dflt
		}
		return s
	}
	switch ev.Event {
	case "etcd":
		if ev.Embedded {
			return fmt.Sprintf("embedded etcd at %s; %d shards, %s, lease TTL %s; revision %d, raft index %d",
				ev.Endpoint, ev.Shards, nodes(ev.Nodes), ev.TTL, ev.Revision, ev.RaftIndex)
		}
		return fmt.Sprintf("etcd at %s; this is node %s; %d shards, lease TTL %s; revision %d, raft index %d",
			ev.Endpoint, ev.Node, ev.Shards, ev.TTL, ev.Revision, ev.RaftIndex)
	case "join", "leave", "crash":
		s := map[string]string{"join": "joins", "leave": "leaves", "crash": "crashes"}[ev.Event]
		if ev.Reason == "" {
			return fmt.Sprintf("%s starts", ev.Node)
		}
		return fmt.Sprintf("== %s %s: %s", ev.Node, s, ev.Reason)
	case "lead":
		if ev.Token == 0 {
			return fmt.Sprintf("%s: %s -> %s", ev.Shard, or(ev.From, "-"), ev.Node)
		}
		return fmt.Sprintf("%s: %s -> %s (token %d)", ev.Shard, or(ev.From, "-"), ev.Node, ev.Token)
	case "unled":
		return "" // the next "lead" line of the shard says it
	case "overlap":
		return fmt.Sprintf("!! %s: %s started leading (token %d) while %s still led, %s", ev.Shard, ev.Node, ev.Token, or(ev.From, "no one"), ev.Reason)
	case "late-write":
		return fmt.Sprintf("%s: %s's write after its term was applied: its key had not gone yet (token %d)", ev.Shard, ev.Node, ev.Token)
	case "leaders":
		names := slices.Sorted(maps.Keys(ev.Leaders))
		var b strings.Builder
		fmt.Fprintf(&b, "leaders settled: %d shards on %s", ev.Shards, nodes(len(names)))
		w := 0
		for _, n := range names {
			w = max(w, len(n))
		}
		for _, n := range names {
			fmt.Fprintf(&b, "\n    %-*s %3d  %s", w, n, len(ev.Leaders[n]), strings.Join(ev.Leaders[n], " "))
		}
		return b.String()
	case "status":
		s := fmt.Sprintf("etcd: revision %d, raft index %d", ev.Revision, ev.RaftIndex)
		if g := ev.SinceSettled; g != nil {
			s += fmt.Sprintf("; since the leaders settled: %+d revisions, %+d raft entries", g.Revisions, g.RaftEntries)
		} else {
			s += "; leaders changing"
		}
		s += fmt.Sprintf("; since start: %+d, %+d", ev.SinceStart.Revisions, ev.SinceStart.RaftEntries)
		return s + fmt.Sprintf("; fenced writes: %d applied, %d refused after their term", ev.Applied, ev.Refused)
	case "script-done":
		return "== script done; Ctrl-C to stop"
	case "skip":
		return "== " + ev.Reason
	case "stopped":
		if ev.Keys == nil {
			return fmt.Sprintf("%s stopped", ev.Node)
		}
		return fmt.Sprintf("stopped: %d keys left under the prefix", *ev.Keys)
	}
	return ev.Event
}

// etcdStatus reads etcd's Status from cli's first endpoint. etcd answers a
// write a moment before it counts the write's entry as applied, so it reads
// again until the applied index has caught up with the commit index: every
// write already answered is then counted.
func etcdStatus(ctx context.Context, cli *clientv3.Client) (*clientv3.StatusResponse, error) {
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
