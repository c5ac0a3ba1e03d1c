#!/usr/bin/env bash
# footprint.sh: what importing quietlock's lock package does to a service's
# go.mod. It makes a service module on Go 1.23 with an etcd client pinned
# (default v3.5.17, with grpc v1.59.0), imports
# github.com/quietlock/quietlock/lock from the checkout at QUIETLOCK_DIR
# (default: this repository), runs go mod tidy, and prints what changed.
#
#   compat/footprint.sh                       # this checkout
#   QUIETLOCK_DIR=/tmp/old compat/footprint.sh   # another checkout (a git worktree)
#   CLIENT=v3.6.5 compat/footprint.sh         # a service already on etcd 3.6
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${QUIETLOCK_DIR:-$here}
client=${CLIENT:-v3.5.17}
grpc=${GRPC:-v1.59.0}
svc=$(mktemp -d)
trap 'rm -rf "$svc"' EXIT
cd "$svc"
cat > go.mod <<MOD
module example.com/service

go 1.23

require (
	go.etcd.io/etcd/client/v3 $client
	google.golang.org/grpc $grpc
)
MOD
cat > main.go <<'GO'
package main

import (
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
)

func main() {
	cli, _ := clientv3.New(clientv3.Config{DialOptions: []grpc.DialOption{}})
	s, _ := concurrency.NewSession(cli)
	_ = s
}
GO
export GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local
go mod tidy >/dev/null 2>&1
cp go.mod before.mod
# Import the lock package, from the checkout, as a service would from a release.
sed -i 's#^\t_ = s$#\t_ = lock.NewMutex(s, "/lock")#; s#^import (#import (\n\t"github.com/quietlock/quietlock/lock"#' main.go
go mod edit -require=github.com/quietlock/quietlock@v0.0.0-00010101000000-000000000000 -replace=github.com/quietlock/quietlock="$dir"
go mod tidy >/dev/null
go mod edit -dropreplace=github.com/quietlock/quietlock
mods() { go mod edit -json "$1" | python3 -c 'import json,sys; m=json.load(sys.stdin); print("go", m["Go"]); [print(r["Path"], r["Version"]) for r in m.get("Require") or []]' | sort; }
echo "service: go 1.23, etcd client $client, grpc $grpc; quietlock from $dir"
diff <(mods before.mod) <(mods go.mod) | grep '^[<>]' | sed 's/^</  before:/; s/^>/  after: /' || true
echo "modules in go.mod: $(mods before.mod | grep -vc '^go ') before, $(mods go.mod | grep -vc '^go ') after"
