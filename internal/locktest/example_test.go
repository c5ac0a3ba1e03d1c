package locktest_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/quietlock/quietlock/lock"
	"github.com/quietlock/quietlock/quietlocktest"
)

// startEtcd starts an embedded etcd for the examples and returns its
// endpoint and a function that stops it.
func startEtcd() (endpoint string, stop func()) {
	endpoint, stop, err := quietlocktest.StartInTempDir()
	if err != nil {
		log.Fatal(err)
	}
	return endpoint, stop
}

func Example() {
	endpoint, stop := startEtcd()
	defer stop()
	ctx := context.Background()

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	m := lock.NewMutex(s, "/my-service/lock")
	if err := m.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	// Guard every write made under the lock with IsOwner: if the lock was
	// lost meanwhile (lease expired in a partition), etcd refuses it.
	resp, err := cli.Txn(ctx).If(m.IsOwner()).Then(clientv3.OpPut("/my-service/data", "written by the holder")).Commit()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("guarded write applied:", resp.Succeeded)
	if err := m.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	<-m.Done()
	fmt.Println("hold ended:", m.Err())
	// Output:
	// guarded write applied: true
	// hold ended: lock: unlocked
}

func Example_tryLock() {
	endpoint, stop := startEtcd()
	defer stop()
	ctx := context.Background()

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
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

	primary := lock.NewMutex(s1, "/my-service/lock")
	standby := lock.NewMutex(s2, "/my-service/lock")
	if err := primary.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	before, err := cli.Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		log.Fatal(err)
	}
	for range 3 {
		err := standby.TryLock(ctx)
		fmt.Println("standby:", err, errors.Is(err, concurrency.ErrLocked))
	}
	after, err := cli.Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("revisions written by failed TryLocks:", after.Header.Revision-before.Header.Revision)
	// Output:
	// standby: mutex: Locked by another session true
	// standby: mutex: Locked by another session true
	// standby: mutex: Locked by another session true
	// revisions written by failed TryLocks: 0
}
