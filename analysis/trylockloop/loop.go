package trylockloop

import (
	"go/ast"
	"go/token"
	"go/types"

	"golang.org/x/tools/go/ast/edge"
	"golang.org/x/tools/go/ast/inspector"
)

// A loop is a for or range statement whose body can run more than once.
type loop struct {
	pos   token.Pos // of its for keyword
	watch bool      // it ranges over or receives from an etcd watch channel
}

// enclosingLoop returns the loop of the enclosing function that makes the
// node at c run repeatedly, or nil if there is none. Of several nested
// loops it returns a watch loop if there is one, else the innermost.
func (g *graph) enclosingLoop(c inspector.Cursor) *loop {
	var found *loop
	for ; ; c = c.Parent() {
		switch c.Node().(type) {
		case *ast.FuncDecl, *ast.FuncLit, *ast.File:
			return found
		}
		switch c.ParentEdgeKind() {
		case edge.ForStmt_Body, edge.ForStmt_Cond, edge.ForStmt_Post, edge.RangeStmt_Body:
		default:
			continue
		}
		l := g.loopAt(c.Parent())
		if l == nil {
			continue
		}
		if found == nil || l.watch && !found.watch {
			found = l
		}
	}
}

// loopAt returns the loop at lc, or nil if it runs its body at most once.
func (g *graph) loopAt(lc inspector.Cursor) *loop {
	l, ok := g.loops[lc.Node()]
	if !ok {
		if !runsOnce(g.info, lc) {
			l = &loop{pos: lc.Node().Pos(), watch: isWatchLoop(g.info, lc)}
		}
		g.loops[lc.Node()] = l
	}
	return l
}

// runsOnce reports whether the loop at lc runs its body at most once: the
// body ends in a return, break or panic, and no continue or goto can skip
// that end.
func runsOnce(info *types.Info, lc inspector.Cursor) bool {
	var body *ast.BlockStmt
	switch s := lc.Node().(type) {
	case *ast.ForStmt:
		body = s.Body
	case *ast.RangeStmt:
		body = s.Body
	}
	if len(body.List) == 0 {
		return false
	}
	switch last := body.List[len(body.List)-1].(type) {
	case *ast.ReturnStmt:
	case *ast.BranchStmt:
		if last.Tok != token.BREAK {
			return false
		}
	case *ast.ExprStmt:
		if !isPanic(info, last.X) {
			return false
		}
	default:
		return false
	}
	var label types.Object
	if ls, ok := lc.Parent().Node().(*ast.LabeledStmt); ok {
		label = info.Defs[ls.Label]
	}
	for bc := range lc.Preorder((*ast.BranchStmt)(nil)) {
		br := bc.Node().(*ast.BranchStmt)
		switch {
		case br.Tok == token.GOTO:
			return false
		case br.Tok != token.CONTINUE:
		case br.Label != nil:
			if label != nil && info.Uses[br.Label] == label {
				return false
			}
		default:
			if innermostLoop(bc) == lc {
				return false
			}
		}
	}
	return true
}

// isPanic reports whether e is a call of the built-in panic.
func isPanic(info *types.Info, e ast.Expr) bool {
	call, ok := e.(*ast.CallExpr)
	if !ok {
		return false
	}
	id, ok := ast.Unparen(call.Fun).(*ast.Ident)
	if !ok {
		return false
	}
	b, ok := info.Uses[id].(*types.Builtin)
	return ok && b.Name() == "panic"
}

// isWatchLoop reports whether the loop at lc ranges over an etcd watch
// channel or receives from one (outside nested loops and functions).
func isWatchLoop(info *types.Info, lc inspector.Cursor) bool {
	if rs, ok := lc.Node().(*ast.RangeStmt); ok && isWatchChan(info.TypeOf(rs.X)) {
		return true
	}
	for uc := range lc.Preorder((*ast.UnaryExpr)(nil)) {
		u := uc.Node().(*ast.UnaryExpr)
		if u.Op == token.ARROW && isWatchChan(info.TypeOf(u.X)) && innermostLoop(uc) == lc {
			return true
		}
	}
	return false
}

// innermostLoop returns the innermost for or range statement around c in
// its function, or the zero Cursor.
func innermostLoop(c inspector.Cursor) inspector.Cursor {
	for p := range c.Enclosing((*ast.ForStmt)(nil), (*ast.RangeStmt)(nil), (*ast.FuncLit)(nil), (*ast.FuncDecl)(nil)) {
		switch p.Node().(type) {
		case *ast.ForStmt, *ast.RangeStmt:
			return p
		}
		break
	}
	return inspector.Cursor{}
}
