package trylockloop

import (
	"cmp"
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"path/filepath"
	"slices"

	"golang.org/x/tools/go/analysis"
	"golang.org/x/tools/go/analysis/passes/inspect"
	"golang.org/x/tools/go/ast/inspector"
)

// Analyzer reports calls of etcd's concurrency.Mutex.TryLock that can run
// repeatedly: in a loop, on every event of an etcd watch, or in a function
// of the same package that a loop calls.
var Analyzer = &analysis.Analyzer{
	Name: "trylockloop",
	Doc: `report etcd concurrency.Mutex.TryLock calls that run in a loop

Each failed TryLock of go.etcd.io/etcd/client/v3/concurrency.Mutex writes
2 revisions and 2 raft entries (a put and a delete of its key). Retried in a
loop it writes forever while the lock is held elsewhere, until etcd answers
"mvcc: database space exceeded"; retried on every watch event of the lock's
prefix it is a write storm. Use Mutex.Lock, which waits on a watch, or
github.com/quietlock/quietlock/lock.Mutex, whose failed TryLock writes
nothing.`,
	URL:      "https://pkg.go.dev/github.com/quietlock/quietlock/analysis/trylockloop",
	Requires: []*analysis.Analyzer{inspect.Analyzer},
	Run:      run,
}

const (
	clientv3Path    = "go.etcd.io/etcd/client/v3"
	concurrencyPath = clientv3Path + "/concurrency"

	loopCost  = "each failed TryLock writes 2 revisions and 2 raft entries, forever while the lock is held elsewhere"
	watchCost = "each failed TryLock's put and delete wake every other watcher, which try again: a write storm"
	fix       = "use Mutex.Lock (which waits on a watch) or github.com/quietlock/quietlock/lock.Mutex (whose failed TryLock writes nothing)"
)

// A reason is why a TryLock call can run repeatedly.
type reason struct {
	loop *loop     // the loop that repeats it; nil for recursion
	at   token.Pos // the loop, or the recursive call
	via  string    // the function called there; "" if TryLock itself is in the loop
}

// rank orders reasons, best first: watch loops, then the TryLock call's
// own loop, then loops calling it, then recursion.
func (r reason) rank() int {
	switch {
	case r.loop == nil:
		return 4
	case r.loop.watch && r.via == "":
		return 0
	case r.loop.watch:
		return 1
	case r.via == "":
		return 2
	}
	return 3
}

func run(pass *analysis.Pass) (any, error) {
	insp := pass.ResultOf[inspect.Analyzer].(*inspector.Inspector)
	g := newGraph(pass, insp)

	best := make(map[*ast.CallExpr]reason)
	consider := func(call *ast.CallExpr, r reason) {
		old, ok := best[call]
		if !ok || r.rank() < old.rank() || r.rank() == old.rank() && r.at < old.at {
			best[call] = r
		}
	}
	for _, f := range g.funcs {
		for _, t := range f.trylocks {
			if t.loop != nil {
				consider(t.call, reason{loop: t.loop, at: t.loop.pos})
			}
		}
		for _, c := range f.calls {
			if !g.reaches[c.callee] {
				continue
			}
			var rs []reason
			if c.loop != nil {
				rs = append(rs, reason{loop: c.loop, at: c.loop.pos, via: c.via})
			}
			callees := g.reachable(c.callee)
			if callees[f] {
				rs = append(rs, reason{at: c.pos, via: c.via})
			}
			for callee := range callees {
				for _, t := range callee.trylocks {
					for _, r := range rs {
						consider(t.call, r)
					}
				}
			}
		}
	}

	calls := make([]*ast.CallExpr, 0, len(best))
	for call := range best {
		calls = append(calls, call)
	}
	slices.SortFunc(calls, func(a, b *ast.CallExpr) int { return cmp.Compare(a.Pos(), b.Pos()) })
	for _, call := range calls {
		report(pass, call, best[call])
	}
	return nil, nil
}

// report reports the TryLock call for reason r.
func report(pass *analysis.Pass, call *ast.CallExpr, r reason) {
	cost := loopCost
	if r.loop != nil && r.loop.watch {
		cost = watchCost
	}
	where := fmt.Sprintf("%s:%d", filepath.Base(pass.Fset.Position(r.at).Filename), pass.Fset.Position(r.at).Line)
	var what string
	switch {
	case r.via == "" && r.loop.watch:
		what = "concurrency.Mutex.TryLock on every etcd watch event"
	case r.via == "":
		what = "concurrency.Mutex.TryLock in a loop"
	case r.loop == nil:
		what = fmt.Sprintf("concurrency.Mutex.TryLock called recursively at %s via %s", where, r.via)
	case r.loop.watch:
		what = fmt.Sprintf("concurrency.Mutex.TryLock called on every etcd watch event at %s via %s", where, r.via)
	default:
		what = fmt.Sprintf("concurrency.Mutex.TryLock called in a loop at %s via %s", where, r.via)
	}
	d := analysis.Diagnostic{Pos: call.Pos(), End: call.End(), Message: what + ": " + cost + "; " + fix}
	if r.via != "" {
		d.Related = []analysis.RelatedInformation{{Pos: r.at, Message: "repeated here"}}
	}
	pass.Report(d)
}

// isTryLock reports whether fn is the TryLock method of etcd's
// concurrency.Mutex (also when promoted through embedding).
func isTryLock(fn *types.Func) bool {
	recv := fn.Signature().Recv()
	if fn.Name() != "TryLock" || recv == nil {
		return false
	}
	t := recv.Type()
	if p, ok := t.(*types.Pointer); ok {
		t = p.Elem()
	}
	return isNamed(t, concurrencyPath, "Mutex")
}

// isWatchChan reports whether t is a channel of etcd watch responses, such
// as a clientv3.WatchChan.
func isWatchChan(t types.Type) bool {
	if t == nil {
		return false
	}
	ch, ok := t.Underlying().(*types.Chan)
	return ok && isNamed(ch.Elem(), clientv3Path, "WatchResponse")
}

// isNamed reports whether t is the named type path.name.
func isNamed(t types.Type, path, name string) bool {
	n, ok := types.Unalias(t).(*types.Named)
	if !ok {
		return false
	}
	obj := n.Obj()
	return obj.Pkg() != nil && obj.Pkg().Path() == path && obj.Name() == name
}
