// Command matrix runs every benchmark experiment of package bench (every
// strategy, K = 1, 4, 16, 64) and writes the results as a Markdown report
// and an SVG chart of the store revision over time while standbys wait.
//
//	go run ./bench/cmd/matrix            # the whole matrix, about 6 minutes
//	go run ./bench/cmd/matrix -short     # K = 1, 4 and short windows
//
// It writes bench/results.md and bench/revisions.svg (see -out).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/quietlock/quietlock/bench"
)

func main() {
	short := flag.Bool("short", false, "K = 1, 4, 6 s windows, fewer poll handovers, 1000 waiters for scale")
	out := flag.String("out", "bench", "directory for results.md and revisions.svg")
	handover := flag.String("handover", "", "run only the graceful handover experiment for these comma-separated strategies, print its table and write nothing")
	kList := flag.String("k", "1,4,16,64", "with -handover: the values of K")
	n := flag.Int("n", 20, "with -handover: handovers per experiment")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("matrix: ")
	if *handover != "" {
		if err := handoverOnly(context.Background(), os.Stdout, *handover, *kList, *n); err != nil {
			log.Fatal(err)
		}
		return
	}

	cfg := config{ks: []int{1, 4, 16, 64}, window: 15 * time.Second, handovers: 20, pollHandovers: 20, waiters: 10_000, locks: 100}
	if *short {
		cfg = config{ks: []int{1, 4}, window: 6 * time.Second, handovers: 20, pollHandovers: 5, waiters: 1000, locks: 10}
	}
	start := time.Now()
	r, err := run(context.Background(), cfg)
	if err != nil {
		log.Fatal(err)
	}
	r.took = time.Since(start)
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	md, err := os.Create(filepath.Join(*out, "results.md"))
	if err != nil {
		log.Fatal(err)
	}
	writeMarkdown(md, cfg, r)
	if err := md.Close(); err != nil {
		log.Fatal(err)
	}
	svg, err := os.Create(filepath.Join(*out, "revisions.svg"))
	if err != nil {
		log.Fatal(err)
	}
	writeSVG(svg, r.waiting[chartK(cfg)], cfg.window)
	if err := svg.Close(); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s and %s in %v", md.Name(), svg.Name(), r.took.Round(time.Second))
}

type config struct {
	ks                       []int
	window                   time.Duration
	handovers, pollHandovers int
	waiters, locks           int
}

// chartK is the K whose waiting windows the chart shows.
func chartK(cfg config) int { return cfg.ks[len(cfg.ks)-1] }

type results struct {
	waiting  map[int][]bench.Waiting
	handover map[bench.Strategy]map[int]bench.Handover
	crash    map[bench.Strategy]map[int]bench.Crash
	trylock  []bench.TryLockCost
	floor    time.Duration
	scale    []bench.Scale
	mixed    []bench.Mixed
	took     time.Duration
}

func run(ctx context.Context, cfg config) (*results, error) {
	r := &results{
		waiting:  map[int][]bench.Waiting{},
		handover: map[bench.Strategy]map[int]bench.Handover{},
		crash:    map[bench.Strategy]map[int]bench.Crash{},
	}
	for _, k := range cfg.ks {
		log.Printf("waiting, K=%d", k)
		ws, err := bench.WaitingAt(ctx, k, cfg.window)
		if err != nil {
			return nil, err
		}
		r.waiting[k] = ws
	}
	for _, st := range bench.Strategies {
		r.handover[st] = map[int]bench.Handover{}
		r.crash[st] = map[int]bench.Crash{}
	}
	log.Print("handover, pollers")
	polls, err := bench.MeasureHandoverAll(ctx, []bench.Strategy{bench.Poll1s, bench.Poll5s}, cfg.ks, cfg.pollHandovers)
	if err != nil {
		return nil, err
	}
	for _, h := range polls {
		r.handover[h.Strategy][h.K] = h
	}
	for _, st := range bench.Strategies {
		if st == bench.Poll1s || st == bench.Poll5s {
			continue
		}
		for _, k := range cfg.ks {
			log.Printf("handover, %s, K=%d", st, k)
			h, err := bench.MeasureHandover(ctx, st, k, cfg.handovers)
			if err != nil {
				return nil, err
			}
			r.handover[st][k] = h
		}
	}
	for _, k := range cfg.ks {
		log.Printf("crash, K=%d", k)
		cs, err := bench.MeasureCrashAll(ctx, bench.Strategies, k)
		if err != nil {
			return nil, err
		}
		for _, c := range cs {
			r.crash[c.Strategy][k] = c
		}
	}
	for _, st := range []bench.Strategy{bench.EtcdMutex, bench.QuietlockLock} {
		c, err := bench.MeasureFailedTryLock(ctx, st, 100)
		if err != nil {
			return nil, err
		}
		r.trylock = append(r.trylock, c)
	}
	for _, st := range []bench.Strategy{bench.EtcdMutex, bench.QuietlockLock, bench.QuietlockElect} {
		log.Printf("mixed, %s", st)
		m, err := bench.MeasureMixed(ctx, st, 20)
		if err != nil {
			return nil, err
		}
		r.mixed = append(r.mixed, m)
	}
	if r.floor, err = bench.MeasureFloor(ctx, 200); err != nil {
		return nil, err
	}
	for _, st := range []bench.Strategy{bench.EtcdMutex, bench.QuietlockLock} {
		log.Printf("scale, %s, %d waiters", st, cfg.waiters)
		s, err := bench.MeasureScale(ctx, st, cfg.waiters, cfg.locks)
		if err != nil {
			return nil, err
		}
		r.scale = append(r.scale, s)
	}
	return r, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/1e6) }

func num(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func writeMarkdown(w io.Writer, cfg config, r *results) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	p("# Benchmark results")
	p("")
	p("Measured by `go run ./bench/cmd/matrix` in %v on %s/%s, %d CPUs, %s, against etcd v3.7.3 embedded (one member, fsync on), each experiment on a server of its own. One holder and K standbys, each with its own client and session.",
		r.took.Round(time.Second), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	p("")
	p("## While waiting")
	p("")
	p("Window %v; half-way through, a foreign key is put and deleted under the prefix (those 2 revisions are not counted). watch-prefix is stopped at %d revisions. Server watchers and watch streams are for K waiting standbys.", cfg.window, bench.RevisionCap)
	p("")
	p("| strategy | K | revisions/min | raft entries/min | keys per standby | revisions to join, per standby | server watchers | watch streams |")
	p("|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, st := range bench.Strategies {
		for _, k := range cfg.ks {
			for _, wt := range r.waiting[k] {
				if wt.Strategy != st {
					continue
				}
				capped := ""
				if wt.Capped {
					capped = fmt.Sprintf(" (capped after %v)", wt.Window.Round(100*time.Millisecond))
				}
				h := r.handover[st][k]
				p("| %s | %d | %s%s | %s | %s | %s | %d | %d |", st, k, num(math.Round(wt.RevisionsPerMin)), capped,
					num(math.Round(wt.RaftEntriesPerMin)), num(wt.KeysPerStandby), num(wt.JoinRevisions), h.Watchers, h.WatchStreams)
			}
		}
	}
	p("")
	p("## Handover")
	p("")
	p("Graceful: the holder releases and one standby takes the lock, over %d handovers (%d for the pollers); revisions and raft entries per handover include the old holder going back to waiting. Crash: the holder's lease is left to expire (TTL 2 s).", cfg.handovers, cfg.pollHandovers)
	p("")
	p("| strategy | K | median ms | p99 ms | revisions per handover | raft entries per handover (mean) | (median) | crash failover ms |")
	p("|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, st := range bench.Strategies {
		for _, k := range cfg.ks {
			h, c := r.handover[st][k], r.crash[st][k]
			failover := ms(c.Failover)
			if c.Failover == 0 {
				failover = fmt.Sprintf("none in %v", bench.TimeCap)
			}
			if h.N == 0 {
				p("| %s | %d | none in %v | | | | | %s |", st, k, bench.TimeCap, failover)
				continue
			}
			capped := ""
			if h.Capped {
				capped = fmt.Sprintf(" (stopped after %d)", h.N)
			}
			p("| %s | %d | %s | %s | %s%s | %s | %s | %s |", st, k, ms(h.Median), ms(h.P99), num(math.Round(h.RevisionsPerHandover*10)/10), capped,
				num(math.Round(h.RaftEntriesPerHandover*10)/10), num(h.MedianRaftEntries), failover)
		}
	}
	p("")
	p("Floor on this server: a put reaches a watcher in %s ms (median of 200).", ms(r.floor))
	p("")
	p("## Beside etcd's queue")
	p("")
	p("One waiter of each strategy waits while an etcd-mutex holds the lock; then, up to %d times, another etcd-mutex waiter queues (while the lock is held) and the holder releases, until the waiter gets the lock. Its writes are the raft entries its own requests cost until then (for quietlock: a failed claim at the first handover, then its place in the queue).", 20)
	p("")
	p("| waiter | handovers until it got the lock | its writes | keys left |")
	p("|---|---:|---:|---:|")
	for _, m := range r.mixed {
		got := fmt.Sprint(m.Handovers)
		if m.Handovers == 0 {
			got = fmt.Sprintf("not in %d", m.Cap)
		}
		p("| %s | %s | %d | %d |", m.Strategy, got, m.Writes, m.KeysLeft)
	}
	p("")
	p("## A TryLock that finds the lock held")
	p("")
	p("| TryLock of | revisions | raft entries |")
	p("|---|---:|---:|")
	for _, c := range r.trylock {
		name := "etcd's concurrency.Mutex (used by the pollers and watch-prefix)"
		if c.Strategy == bench.QuietlockLock {
			name = "quietlock's lock.Mutex"
		}
		p("| %s | %s | %s |", name, num(c.Revisions), num(c.RaftEntries))
	}
	p("")
	p("## Scale: %d waiters, each with its own session, on one client, across %d locks", cfg.waiters, cfg.locks)
	p("")
	p("Heap is the whole process's, which also runs the embedded server.")
	p("")
	p("| strategy | server watchers | watch streams | keys per waiter | goroutines per waiter | heap bytes per waiter | revisions to join |")
	p("|---|---:|---:|---:|---:|---:|---:|")
	for _, s := range r.scale {
		p("| %s | %d | %d | %s | %.2f | %.0f | %d |", s.Strategy, s.Watchers, s.WatchStreams, num(s.KeysPerWaiter), s.GoroutinesPerWaiter, s.HeapBytesPerWaiter, s.RevisionsToJoin)
	}
}

// writeSVG draws revisions consumed over the waiting window, one line per
// strategy, on a log scale (0 at the bottom).
func writeSVG(w io.Writer, ws []bench.Waiting, window time.Duration) {
	const (
		width, height          = 760, 420
		left, right, top, base = 70, 190, 40, 360
	)
	maxY := math.Log10(1 + float64(bench.RevisionCap))
	x := func(d time.Duration) float64 {
		return left + float64(d)/float64(window)*float64(width-left-right)
	}
	y := func(rev int64) float64 { return base - math.Log10(1+float64(rev))/maxY*float64(base-top) }
	colors := map[bench.Strategy]string{
		bench.Poll1s: "#d62728", bench.Poll5s: "#ff7f0e", bench.WatchPrefix: "#9467bd",
		bench.EtcdMutex: "#1f77b4", bench.EtcdElection: "#17becf", bench.QuietlockLock: "#2ca02c", bench.QuietlockElect: "#98df8a",
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	k := 0
	if len(ws) > 0 {
		k = ws[0].K
	}
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">Revisions consumed while %d standbys wait (log scale)</text>`+"\n", left, k)
	for _, tick := range []int64{0, 10, 100, 1000, 10_000, 100_000} {
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, width-right, y(tick), y(tick))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%d</text>`+"\n", left-6, y(tick)+4, tick)
	}
	for s := time.Duration(0); s <= window; s += window / 5 {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%.0fs</text>`+"\n", x(s), base+18, s.Seconds())
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">time into the window (a foreign put+delete at the middle)</text>`+"\n", x(window/2), base+40)
	for i, wt := range ws {
		pts := []string{fmt.Sprintf("%.1f,%.1f", x(0), y(0))}
		for _, s := range wt.Series {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.At), y(s.Revisions)))
		}
		// Offset flat lines a little so that overlapping ones stay visible.
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" transform="translate(0,%d)" points="%s"/>`+"\n", colors[wt.Strategy], -i, strings.Join(pts, " "))
		last := int64(0)
		if n := len(wt.Series); n > 0 {
			last = wt.Series[n-1].Revisions
			if wt.Series[n-1].At >= window/2 {
				last -= 2 // the foreign put and delete
			}
		}
		ly := top + 20 + i*22
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", width-right+12, width-right+32, ly, ly, colors[wt.Strategy])
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s: %d own</text>`+"\n", width-right+38, ly+4, wt.Strategy, max(last, 0))
	}
	b.WriteString("</svg>\n")
	io.WriteString(w, b.String())
}

// handoverOnly runs the graceful handover experiment for the named
// strategies and values of K, and prints its table.
func handoverOnly(ctx context.Context, w io.Writer, strategies, kList string, n int) error {
	var ks []int
	for _, f := range strings.Split(kList, ",") {
		var k int
		if _, err := fmt.Sscan(f, &k); err != nil || k < 1 {
			return fmt.Errorf("-k: bad value %q", f)
		}
		ks = append(ks, k)
	}
	fmt.Fprintln(w, "| strategy | K | median ms | p99 ms | revisions per handover | raft entries per handover (mean) | (median) |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	for _, name := range strings.Split(strategies, ",") {
		st := bench.Strategy(name)
		if !slices.Contains(bench.Strategies, st) {
			return fmt.Errorf("-handover: no strategy %q", name)
		}
		for _, k := range ks {
			h, err := bench.MeasureHandover(ctx, st, k, n)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s |\n", st, k, ms(h.Median), ms(h.P99), num(h.RevisionsPerHandover), num(h.RaftEntriesPerHandover), num(h.MedianRaftEntries))
		}
	}
	return nil
}
