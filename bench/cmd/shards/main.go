// Command shards measures what it costs etcd for M processes to lead N
// shards: with quietlock's shard.Runner (one lease per process, leaders
// balanced), then a join, a crash and a graceful leave; and, to compare,
// with one elect.Run per shard per process and with one etcd
// concurrency.Election per shard per process. Each is measured on an
// embedded etcd of its own, one after the other, each process with a client
// of its own.
//
//	go run ./bench/cmd/shards                 # N = 1000, M = 5, about 2 minutes
//	go run ./bench/cmd/shards -compare none   # shard.Runner only
//
// If a comparison does not settle within -settle-timeout at N, the command
// measures the comparisons again at -fallback-n, and shard.Runner too, so
// that the figures side by side are at the same N. It writes bench/results-shards.md
// (see -out).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/quietlock/quietlock/bench"
)

func main() {
	n := flag.Int("n", 1000, "shards")
	m := flag.Int("m", 5, "processes")
	ttl := flag.Duration("ttl", 5*time.Second, "lease TTL, a whole number of seconds")
	steady := flag.Duration("steady", 30*time.Second, "how long the steady state is measured")
	compare := flag.String("compare", "elect,etcd", `comparisons, comma-separated: "elect" (an elect.Run per shard per process), "etcd" (a concurrency.Election per shard per process), or "none"`)
	out := flag.String("out", "bench/results-shards.md", "the Markdown report")
	quiet := flag.Duration("quiet", 2*time.Second, "settled: every shard led and no raft entry for this long")
	settleTimeout := flag.Duration("settle-timeout", 3*time.Minute, "how long to wait for each start or event to settle")
	fallbackN := flag.Int("fallback-n", 200, "shards to measure at, every way, if a comparison does not settle at -n (0: do not)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("shards: ")

	var comps []bench.ShardImpl
	for _, c := range strings.Split(*compare, ",") {
		switch strings.TrimSpace(c) {
		case "elect":
			comps = append(comps, bench.ShardElectRuns)
		case "etcd":
			comps = append(comps, bench.ShardEtcdElection)
		case "none", "":
		default:
			log.Fatalf("-compare: no comparison %q", c)
		}
	}
	if *n < 1 || *m < 2 || *ttl < time.Second || *ttl%time.Second != 0 {
		log.Fatal("need -n >= 1, -m >= 2 and a -ttl of whole seconds")
	}

	ctx := context.Background()
	began := time.Now()
	cfg := bench.ShardConfig{Shards: *n, Procs: *m, TTL: *ttl, Steady: *steady, Quiet: *quiet, SettleTimeout: *settleTimeout, Events: true}
	rs, err := runAll(ctx, cfg, comps)
	if err != nil {
		log.Fatal(err)
	}
	sections := [][]bench.ShardResult{rs}
	settled := true
	for _, r := range rs {
		settled = settled && r.Start.Settled
	}
	if !settled && *fallbackN > 0 && *fallbackN < *n {
		small := cfg
		small.Shards = *fallbackN
		log.Printf("not all settled at N=%d: measuring again at N=%d", *n, small.Shards)
		rs, err := runAll(ctx, small, comps)
		if err != nil {
			log.Fatal(err)
		}
		sections = append(sections, rs)
	}

	f, err := os.Create(*out)
	if err != nil {
		log.Fatal(err)
	}
	writeMarkdown(f, sections, began, time.Since(began))
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s in %v", *out, time.Since(began).Round(time.Second))
}

// runAll measures shard.Runner (with its events) and then each comparison,
// one at a time: the server's watcher gauges are process-wide.
func runAll(ctx context.Context, cfg bench.ShardConfig, comps []bench.ShardImpl) ([]bench.ShardResult, error) {
	var out []bench.ShardResult
	for _, impl := range append([]bench.ShardImpl{bench.ShardRunner}, comps...) {
		log.Printf("%s, N=%d, M=%d", impl, cfg.Shards, cfg.Procs)
		t := time.Now()
		r, err := bench.MeasureShards(ctx, impl, cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", impl, err)
		}
		log.Printf("%s: settled %v in %v; done in %v", impl, r.Start.Settled, r.Start.Took.Round(time.Millisecond), time.Since(t).Round(time.Second))
		out = append(out, r)
	}
	return out, nil
}

func num(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// spread formats per-process values as "v" if all are equal, else "min–max".
func spread[T int | int64 | float64](vs []T) string {
	if len(vs) == 0 {
		return "–"
	}
	lo, hi := vs[0], vs[0]
	for _, v := range vs {
		lo, hi = min(lo, v), max(hi, v)
	}
	if lo == hi {
		return num(float64(lo))
	}
	return num(float64(lo)) + "–" + num(float64(hi))
}

func ints(vs []int) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = fmt.Sprint(v)
	}
	return strings.Join(s, ", ")
}

func writeMarkdown(w io.Writer, sections [][]bench.ShardResult, began time.Time, took time.Duration) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	first := sections[0][0]
	cfg := first.Cfg
	p("# Sharded leadership: benchmark results")
	p("")
	p("Measured by")
	p("")
	p("    %s", strings.TrimSpace("go run ./bench/cmd/shards "+strings.Join(os.Args[1:], " ")))
	p("")
	p("on %s, in %v, on %s/%s, %d CPUs, %s, against etcd %s embedded (one member, fsync on), each way on a server of its own, one after the other. M = %d processes, each with a clientv3 client of its own; lease TTL %v. Every figure below was measured in this run.",
		began.UTC().Format("2006-01-02 15:04 MST"), took.Round(time.Second), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(),
		first.EtcdVersion, cfg.Procs, cfg.TTL)
	for i, rs := range sections {
		n := rs[0].Cfg.Shards
		p("")
		switch {
		case len(sections) == 1:
			p("## N = %d shards, M = %d processes", n, cfg.Procs)
		case i == 0:
			p("## N = %d shards, M = %d processes (not every way settled)", n, cfg.Procs)
		default:
			p("## N = %d shards, M = %d processes (every way again at a smaller N, after one did not settle at N = %d)", n, cfg.Procs, sections[0][0].Cfg.Shards)
		}
		p("")
		writeTable(p, rs)
		for _, r := range rs {
			if len(r.Events) == 0 {
				continue
			}
			p("")
			p("### %s: join, crash, graceful leave (N = %d)", r.Impl, n)
			p("")
			p("After the steady state: a process joins (%d → %d); then one process's client is closed without revoking anything, so its lease must expire (→ %d); then the process that joined stops its Run, which revokes its lease (→ %d).", cfg.Procs, cfg.Procs+1, cfg.Procs, cfg.Procs-1)
			p("")
			p("| event | processes after | every shard led after | settled after | revisions | raft entries | leaders per process | max − min |")
			p("|---|---:|---:|---:|---:|---:|---|---:|")
			for _, e := range r.Events {
				if !e.Settled {
					p("| %s | %d | %s | not in %v | | | %s | %d |", e.Event, e.Procs, secs(e.AllLed), e.Took, ints(e.Leaders), e.Balance)
					continue
				}
				p("| %s | %d | %s | %s | %d | %d | %s | %d |", e.Event, e.Procs, secs(e.AllLed), secs(e.Took), e.Revisions, e.RaftEntries, ints(e.Leaders), e.Balance)
			}
		}
	}
	p("")
	p("## How measured")
	p("")
	p("- **Settled**: polled every 100 ms: every shard has a leader key (the key with the lowest create revision in its election, read from etcd) whose value is a process alive; each process's own callbacks agree with etcd on how many shards it leads; the server holds the leases it should (one per process, for elect.Run one per Run); for shard.Runner only, max − min leaders per process ≤ 1; and etcd's raft applied index has not moved for %v. The time to settle is from the event to the first poll from which all that held with the raft index unchanged (so it is exact to about 100 ms). *Every shard led after* is the first poll at which every shard had a leader among the processes alive (for a join it holds at once).", cfg.Quiet)
	p("- **Revisions / raft entries** of an event: the store revision (Status header) and the raft applied index (Status RaftAppliedIndex) just before the event, and at the moment it settled.")
	p("- **Leases**: the server's lease list (`Leases`) once settled; per process is total / M.")
	p("- **Renewal streams**: counted, not assumed: each process's client has a gRPC stream interceptor that counts the `LeaseKeepAlive` streams it opens and the renewal requests sent on them; a stream counts as closed when its context ends or a receive fails. *Open* is read once settled; *opened per minute* and *renewals sent per minute* over the steady window.")
	p("- **Server watchers / watch streams**: etcd's `etcd_debugging_mvcc_watcher_total` and `etcd_debugging_mvcc_watch_stream_total` gauges from /metrics once settled, less their values before the processes started (the benchmark's own admin client watches nothing).")
	p("- **Keys**: a count-only Get of the prefix once settled (shard.Runner: a leader key per shard and a membership key per process; the others: every key of every election).")
	p("- **Steady state**: right after settling, the store revision and raft applied index are read, the benchmark sleeps for the steady window, and reads them again; the growth is scaled to a minute. Nothing else writes to the server.")
	p("- **Balance**: leaders per process, as etcd says (from the leader keys' values), max − min, once settled and again at the end of the steady window; only shard.Runner tries to balance.")
}

func writeTable(p func(string, ...any), rs []bench.ShardResult) {
	cfg := rs[0].Cfg
	head := "| per N = " + fmt.Sprint(cfg.Shards) + " shards, M = " + fmt.Sprint(cfg.Procs) + " processes |"
	sep := "|---|"
	for _, r := range rs {
		head += " " + string(r.Impl) + " |"
		sep += "---:|"
	}
	p("%s", head)
	p("%s", sep)
	row := func(name string, f func(r bench.ShardResult) string) {
		line := "| " + name + " |"
		for _, r := range rs {
			v := "–"
			if r.Start.Settled || strings.HasPrefix(name, "time to settle") || strings.HasPrefix(name, "leaders per process") {
				v = f(r)
			}
			line += " " + v + " |"
		}
		p("%s", line)
	}
	row("time to settle after start", func(r bench.ShardResult) string {
		if !r.Start.Settled {
			return fmt.Sprintf("**did not settle in %v**", r.Start.Took)
		}
		return secs(r.Start.Took)
	})
	row("revisions / raft entries to settle", func(r bench.ShardResult) string {
		return fmt.Sprintf("%d / %d", r.Start.Revisions, r.Start.RaftEntries)
	})
	row("leases: total (per process)", func(r bench.ShardResult) string {
		return fmt.Sprintf("%d (%s)", r.Leases, num(float64(r.Leases)/float64(r.Cfg.Procs)))
	})
	row("LeaseKeepAlive streams open, per process", func(r bench.ShardResult) string { return spread(r.KeepAliveOpen) })
	row("LeaseKeepAlive streams opened until settled, per process", func(r bench.ShardResult) string { return spread(r.KeepAliveOpened) })
	row("LeaseKeepAlive streams opened per minute (steady), per process", func(r bench.ShardResult) string { return spread(round(r.KeepAliveOpenedPerMin)) })
	row("renewals sent per minute (steady), per process", func(r bench.ShardResult) string { return spread(round(r.RenewalsPerMin)) })
	row("server watchers", func(r bench.ShardResult) string { return fmt.Sprint(r.Watchers) })
	row("server watch streams", func(r bench.ShardResult) string { return fmt.Sprint(r.WatchStreams) })
	row("keys under the prefix", func(r bench.ShardResult) string { return fmt.Sprint(r.Keys) })
	row("revisions/min (steady)", func(r bench.ShardResult) string { return num(math.Round(r.RevisionsPerMin*10) / 10) })
	row("raft entries/min (steady)", func(r bench.ShardResult) string { return num(math.Round(r.RaftEntriesPerMin*10) / 10) })
	row("steady window", func(r bench.ShardResult) string { return secs(r.SteadyWindow) })
	row("leaders per process once settled (or at the timeout)", func(r bench.ShardResult) string { return ints(r.Start.Leaders) })
	row("balance, max − min leaders per process (settled / end of steady)", func(r bench.ShardResult) string {
		return fmt.Sprintf("%d / %d", r.Start.Balance, r.SteadyBalance)
	})
}

func round(vs []float64) []float64 {
	out := make([]float64, len(vs))
	for i, v := range vs {
		out[i] = math.Round(v)
	}
	return out
}
