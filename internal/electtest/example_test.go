package electtest_test

import (
	"context"
	"fmt"
	"log"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/quietlock/quietlock/elect"
	"github.com/quietlock/quietlock/quietlocktest"
)

func newClient(endpoint string) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	return cli
}

// A primary/standby service embeds Run: the leading callback does the
// primary's work, fenced with the term's token, until its context ends.
func Example_run() {
	endpoint, stop, err := quietlocktest.StartInTempDir()
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	cli := newClient(endpoint)
	defer cli.Close()

	ctx, cancel := context.WithCancel(context.Background())
	leading := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- elect.Run(ctx, cli, "/my-service/leader", "node-1", elect.Callbacks{
			OnStartedLeading: func(ctx context.Context, term *elect.Term) {
				fmt.Println("leading with token", term.Token)
				// A write that etcd refuses once this term is over.
				resp, err := term.Txn(ctx).Then(clientv3.OpPut("/my-service/state", "written by node-1")).Commit()
				fmt.Println("fenced write applied:", err == nil && resp.Succeeded)
				close(leading)
				<-ctx.Done()
			},
			OnStoppedLeading: func(term *elect.Term, reason error) {
				fmt.Println("stopped leading:", reason)
			},
		})
	}()
	<-leading
	cancel() // shut down: resign so that a standby takes over at once
	fmt.Println("Run returned:", <-done)
	// Output:
	// leading with token 2
	// fenced write applied: true
	// stopped leading: elect: resigned
	// Run returned: <nil>
}

func Example_observe() {
	endpoint, stop, err := quietlocktest.StartInTempDir()
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	cli := newClient(endpoint)
	defer cli.Close()
	ctx := context.Background()
	s1, err := concurrency.NewSession(cli)
	if err != nil {
		log.Fatal(err)
	}
	defer s1.Close()
	s2, err := concurrency.NewSession(cli)
	if err != nil {
		log.Fatal(err)
	}
	defer s2.Close()

	leader := elect.NewElection(s1, "/my-service/leader")
	if err := leader.Campaign(ctx, "node-1"); err != nil {
		log.Fatal(err)
	}
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	observed := elect.NewElection(s2, "/my-service/leader").Observe(octx)
	fmt.Println("leader:", string((<-observed).Kvs[0].Value))
	if err := leader.Proclaim(ctx, "node-1 (draining)"); err != nil {
		log.Fatal(err)
	}
	fmt.Println("leader:", string((<-observed).Kvs[0].Value))
	// Output:
	// leader: node-1
	// leader: node-1 (draining)
}
