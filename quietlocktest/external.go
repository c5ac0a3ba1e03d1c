package quietlocktest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Debian's etcd-server and etcd-client packages install these.
const (
	DebianEtcd    = "/usr/bin/etcd"
	DebianEtcdctl = "/usr/bin/etcdctl"
)

// Binary returns the path of an installed program, or skips the test with
// a message saying how to get it.
func Binary(t testing.TB, path, pkg string) string {
	t.Helper()
	if _, err := exec.LookPath(path); err != nil {
		t.Skipf("%s not installed (apt-get install %s): %v", path, pkg, err)
	}
	return path
}

// NewExternal starts the etcd binary bin as a single-member cluster on
// free loopback ports with its data in t.TempDir(), and stops it when the
// test ends. The server is quiet when NewExternal returns (see [WaitQuiet]).
func NewExternal(t testing.TB, bin string) *Etcd {
	t.Helper()
	var lastErr error
	for range 5 { // a free port can be taken before etcd binds it
		ports := make([]int, 2)
		for i := range ports {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ports[i] = l.Addr().(*net.TCPAddr).Port
			l.Close()
		}
		curl := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		purl := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
		cmd := exec.Command(bin,
			"--name", "default", "--data-dir", t.TempDir(),
			"--listen-client-urls", curl, "--advertise-client-urls", curl,
			"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
			"--initial-cluster", "default="+purl)
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
		if lastErr = waitReady(curl, exited); lastErr == nil {
			t.Cleanup(stop)
			c := &Etcd{Endpoint: curl, t: t}
			c.Client = c.NewClient()
			return c
		}
		stop()
	}
	t.Fatalf("start %s: %v", bin, lastErr)
	return nil
}

// waitReady waits until the server at endpoint answers a read and is quiet.
func waitReady(endpoint string, exited <-chan error) error {
	cli, err := clientv3.New(ClientConfig(endpoint))
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "ready")
		cancel()
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			defer cancel()
			return WaitQuiet(ctx, cli, endpoint)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("etcd exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not ready: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
