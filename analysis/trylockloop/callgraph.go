package trylockloop

import (
	"go/ast"
	"go/token"
	"go/types"

	"golang.org/x/tools/go/analysis"
	"golang.org/x/tools/go/ast/inspector"
	"golang.org/x/tools/go/types/typeutil"
)

// A graph is the static call graph of one package, as far as the analyzer
// follows it (see the package documentation), with the TryLock calls of
// each function.
type graph struct {
	info  *types.Info
	pkg   *types.Package
	funcs []*fnode // in source order

	byNode   map[ast.Node]*fnode         // by *ast.FuncDecl or *ast.FuncLit
	byFunc   map[*types.Func]*fnode      // declared functions and methods
	binds    map[*types.Var][]ast.Expr   // assigned values; nil if unknown or address taken
	closures map[*types.Var]*ast.FuncLit // local variables bound only to one literal
	called   map[*types.Var]*loop        // parameters called in their function's body, and the loop doing it
	loops    map[ast.Node]*loop          // by loop statement; nil if it runs at most once

	reaches map[*fnode]bool            // functions that call TryLock, directly or not
	reach   map[*fnode]map[*fnode]bool // memo of reachable
}

// An fnode is a function or function literal of the package.
type fnode struct {
	sig      *types.Signature
	trylocks []trylock // TryLock calls in its body (not in nested literals)
	calls    []call    // calls of functions of the package
}

// A trylock is a call of concurrency.Mutex.TryLock.
type trylock struct {
	call *ast.CallExpr
	loop *loop // the loop repeating it in its function, or nil
}

// A call is a call, at pos, of a function of the package.
type call struct {
	pos    token.Pos
	callee *fnode
	via    string // the name of the function called at pos
	loop   *loop  // the loop repeating the call, or nil
}

// newGraph builds the graph of the package of pass.
func newGraph(pass *analysis.Pass, insp *inspector.Inspector) *graph {
	g := &graph{
		info:     pass.TypesInfo,
		pkg:      pass.Pkg,
		byNode:   make(map[ast.Node]*fnode),
		byFunc:   make(map[*types.Func]*fnode),
		binds:    make(map[*types.Var][]ast.Expr),
		closures: make(map[*types.Var]*ast.FuncLit),
		called:   make(map[*types.Var]*loop),
		loops:    make(map[ast.Node]*loop),
		reaches:  make(map[*fnode]bool),
		reach:    make(map[*fnode]map[*fnode]bool),
	}
	root := insp.Root()
	g.findBindings(root)
	for c := range root.Preorder((*ast.FuncDecl)(nil), (*ast.FuncLit)(nil)) {
		f := new(fnode)
		switch n := c.Node().(type) {
		case *ast.FuncDecl:
			fn, ok := g.info.Defs[n.Name].(*types.Func)
			if !ok {
				continue
			}
			f.sig = fn.Signature()
			g.byFunc[fn] = f
		case *ast.FuncLit:
			f.sig, _ = g.info.TypeOf(n).(*types.Signature)
		}
		g.byNode[c.Node()] = f
		g.funcs = append(g.funcs, f)
	}
	g.findCalls(root)
	g.findReaches()
	return g
}

// findBindings fills binds and closures.
func (g *graph) findBindings(root inspector.Cursor) {
	bind := func(lhs, rhs ast.Expr) {
		id, ok := ast.Unparen(lhs).(*ast.Ident)
		if !ok {
			return
		}
		if v, ok := g.info.ObjectOf(id).(*types.Var); ok {
			g.binds[v] = append(g.binds[v], rhs)
		}
	}
	for c := range root.Preorder((*ast.AssignStmt)(nil), (*ast.ValueSpec)(nil), (*ast.RangeStmt)(nil), (*ast.UnaryExpr)(nil)) {
		switch n := c.Node().(type) {
		case *ast.AssignStmt:
			plain := len(n.Lhs) == len(n.Rhs) && (n.Tok == token.ASSIGN || n.Tok == token.DEFINE)
			for i, lhs := range n.Lhs {
				if plain {
					bind(lhs, n.Rhs[i])
				} else {
					bind(lhs, nil)
				}
			}
		case *ast.ValueSpec:
			for i, name := range n.Names {
				switch len(n.Values) {
				case 0:
				case len(n.Names):
					bind(name, n.Values[i])
				default:
					bind(name, nil)
				}
			}
		case *ast.RangeStmt:
			if n.Key != nil {
				bind(n.Key, nil)
			}
			if n.Value != nil {
				bind(n.Value, nil)
			}
		case *ast.UnaryExpr:
			if n.Op == token.AND {
				bind(n.X, nil)
			}
		}
	}
	for v, rhs := range g.binds {
		if len(rhs) != 1 || v.Parent() == nil || v.Parent() == g.pkg.Scope() {
			continue
		}
		if lit, ok := ast.Unparen(rhs[0]).(*ast.FuncLit); ok {
			g.closures[v] = lit
		}
	}
}

// findCalls fills the trylocks and calls of each function, and called.
func (g *graph) findCalls(root inspector.Cursor) {
	type site struct {
		from *fnode
		call *ast.CallExpr
		loop *loop
	}
	var sites []site
	for c := range root.Preorder((*ast.CallExpr)(nil)) {
		call := c.Node().(*ast.CallExpr)
		from := g.enclosingFunc(c)
		if from == nil {
			continue // package-level initializer: runs once
		}
		l := g.enclosingLoop(c)
		if fn := typeutil.StaticCallee(g.info, call); fn != nil && isTryLock(fn) {
			from.trylocks = append(from.trylocks, trylock{call: call, loop: l})
			continue
		}
		if v, ok := typeutil.Callee(g.info, call).(*types.Var); ok && isParam(from.sig, v) && len(g.binds[v]) == 0 {
			if old, ok := g.called[v]; !ok || better(l, old) {
				g.called[v] = l
			}
		}
		sites = append(sites, site{from, call, l})
	}

	// Calls are known only now that called is complete.
	for _, s := range sites {
		callee, via := g.resolve(s.call.Fun)
		if callee == nil {
			continue
		}
		s.from.calls = append(s.from.calls, call{pos: s.call.Pos(), callee: callee, via: via, loop: s.loop})
		if callee.sig == nil {
			continue
		}
		params := callee.sig.Params()
		for i, arg := range s.call.Args {
			if i >= params.Len() || callee.sig.Variadic() && i == params.Len()-1 {
				break
			}
			l, ok := g.called[params.At(i)]
			target, _ := g.resolve(arg)
			if !ok || target == nil {
				continue
			}
			if better(s.loop, l) {
				l = s.loop
			}
			s.from.calls = append(s.from.calls, call{pos: s.call.Pos(), callee: target, via: via, loop: l})
		}
	}
}

// findReaches fills reaches.
func (g *graph) findReaches() {
	callers := make(map[*fnode][]*fnode)
	var work []*fnode
	for _, f := range g.funcs {
		for _, c := range f.calls {
			callers[c.callee] = append(callers[c.callee], f)
		}
		if len(f.trylocks) > 0 {
			g.reaches[f] = true
			work = append(work, f)
		}
	}
	for len(work) > 0 {
		f := work[len(work)-1]
		work = work[:len(work)-1]
		for _, caller := range callers[f] {
			if !g.reaches[caller] {
				g.reaches[caller] = true
				work = append(work, caller)
			}
		}
	}
}

// reachable returns the functions that calling f can call TryLock in,
// directly or not, and also f itself.
func (g *graph) reachable(f *fnode) map[*fnode]bool {
	if r, ok := g.reach[f]; ok {
		return r
	}
	r := map[*fnode]bool{f: true}
	stack := []*fnode{f}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, c := range n.calls {
			if g.reaches[c.callee] && !r[c.callee] {
				r[c.callee] = true
				stack = append(stack, c.callee)
			}
		}
	}
	g.reach[f] = r
	return r
}

// enclosingFunc returns the function or literal whose body holds c, or nil.
func (g *graph) enclosingFunc(c inspector.Cursor) *fnode {
	for fc := range c.Enclosing((*ast.FuncDecl)(nil), (*ast.FuncLit)(nil)) {
		return g.byNode[fc.Node()]
	}
	return nil
}

// resolve returns the function of the package that e, a function value,
// statically denotes, and its name; or nil.
func (g *graph) resolve(e ast.Expr) (*fnode, string) {
	e = ast.Unparen(e)
	switch x := e.(type) {
	case *ast.FuncLit:
		return g.byNode[x], "a function literal"
	case *ast.IndexExpr: // instantiation
		e = ast.Unparen(x.X)
	case *ast.IndexListExpr:
		e = ast.Unparen(x.X)
	}
	var id *ast.Ident
	switch x := e.(type) {
	case *ast.Ident:
		id = x
	case *ast.SelectorExpr:
		id = x.Sel
	default:
		return nil, ""
	}
	switch obj := g.info.Uses[id].(type) {
	case *types.Func:
		if f := g.byFunc[obj.Origin()]; f != nil {
			return f, funcName(obj)
		}
	case *types.Var:
		if lit := g.closures[obj]; lit != nil {
			return g.byNode[lit], obj.Name()
		}
	}
	return nil, ""
}

// funcName returns the name of fn as it appears in messages: F or T.M.
func funcName(fn *types.Func) string {
	recv := fn.Signature().Recv()
	if recv == nil {
		return fn.Name()
	}
	t := recv.Type()
	if p, ok := t.(*types.Pointer); ok {
		t = p.Elem()
	}
	if n, ok := types.Unalias(t).(*types.Named); ok {
		return n.Obj().Name() + "." + fn.Name()
	}
	return fn.Name()
}

// isParam reports whether v is a parameter of sig.
func isParam(sig *types.Signature, v *types.Var) bool {
	if sig == nil {
		return false
	}
	for p := range sig.Params().Variables() {
		if p == v {
			return true
		}
	}
	return false
}

// better reports whether loop a makes a stronger report than loop b.
func better(a, b *loop) bool {
	return a != nil && (b == nil || a.watch && !b.watch)
}
