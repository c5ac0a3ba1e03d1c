package quietlocktest_test

import (
	"context"
	"fmt"
	"log"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/quietlock/quietlock/quietlocktest"
)

// A server from the kit is quiet when it is returned, so counting what an
// operation cost etcd needs no sleeping: read the stats, do it, read again.
func Example() {
	endpoint, stop, err := quietlocktest.StartInTempDir()
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	cli, err := clientv3.New(quietlocktest.ClientConfig(endpoint))
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()

	before, err := quietlocktest.ReadStats(ctx, cli, endpoint)
	if err != nil {
		log.Fatal(err)
	}
	// A failed conditional write: it changes no key, yet etcd appends it to
	// the raft log.
	if _, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("/k"), ">", 0)).Then(clientv3.OpPut("/k", "v")).Commit(); err != nil {
		log.Fatal(err)
	}
	// A read costs nothing.
	if _, err := cli.Get(ctx, "/k"); err != nil {
		log.Fatal(err)
	}
	after, err := quietlocktest.ReadStats(ctx, cli, endpoint)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("revisions:", after.Revision-before.Revision)
	fmt.Println("raft entries:", after.RaftIndex-before.RaftIndex)
	// Output:
	// revisions: 0
	// raft entries: 1
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
