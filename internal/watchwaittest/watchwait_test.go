//go:build go1.24

package watchwaittest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/quietlock/quietlock/internal/watchwait"
	"github.com/quietlock/quietlock/quietlocktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// put creates or overwrites key and returns the owner observation of it.
func put(t *testing.T, c *quietlocktest.Etcd, key string) watchwait.Owner {
	t.Helper()
	if _, err := c.Client.Put(t.Context(), key, ""); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Client.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	return watchwait.Owner{Prefix: "/p/", Key: key, CreateRev: resp.Kvs[0].CreateRevision, Rev: resp.Header.Revision}
}

func del(t *testing.T, c *quietlocktest.Etcd, key string) {
	t.Helper()
	if _, err := c.Client.Delete(t.Context(), key); err != nil {
		t.Fatal(err)
	}
}

func isDeleted(w *watchwait.Waiter) bool {
	select {
	case <-w.Deleted():
		return true
	default:
		return false
	}
}

func waitDeleted(t *testing.T, w *watchwait.Waiter) {
	t.Helper()
	select {
	case <-w.Deleted():
	case <-t.Context().Done():
		t.Fatal("waiter not woken")
	}
	if err := w.Err(); err != nil {
		t.Fatalf("waiter woken with error: %v", err)
	}
}

// Waiters on one key of one client share one server watcher; it goes away
// with the last of them, and the registry is empty again.
func TestShareAndRelease(t *testing.T) {
	c := quietlocktest.New(t)
	base := c.Stats()
	o := put(t, c, "/p/a")
	cli := c.NewClient()
	ws := make([]*watchwait.Waiter, 10)
	for i := range ws {
		ws[i] = watchwait.Join(cli, o)
	}
	quietlocktest.WaitFor(t, "one watcher", func() bool { return c.Stats().Watchers == base.Watchers+1 })
	if got := watchwait.Entries(); got != 1 {
		t.Errorf("entries: got %d, want 1", got)
	}
	// A second client has its own watch.
	other := watchwait.Join(c.NewClient(), o)
	quietlocktest.WaitFor(t, "two watchers", func() bool { return c.Stats().Watchers == base.Watchers+2 })

	for _, w := range ws {
		w.Leave(nil)
	}
	other.Leave(nil)
	other.Leave(nil) // idempotent
	if got := watchwait.Entries(); got != 0 {
		t.Errorf("entries after leaving: got %d, want 0", got)
	}
	quietlocktest.WaitFor(t, "watchers and streams at baseline", func() bool {
		st := c.Stats()
		return st.Watchers == base.Watchers && st.WatchStreams == base.WatchStreams
	})
}

// A deletion wakes the waiters of the deleted incarnation only; a waiter
// that joins with an observation older than a known deletion is woken at
// once.
func TestIncarnations(t *testing.T) {
	c := quietlocktest.New(t)
	cli := c.NewClient()
	first := put(t, c, "/p/a")
	w1 := watchwait.Join(cli, first)
	defer w1.Leave(nil)
	del(t, c, "/p/a")
	waitDeleted(t, w1)

	// The key comes back (the same session locking again): a waiter on the
	// new incarnation is not woken by the old deletion...
	second := put(t, c, "/p/a")
	w2 := watchwait.Join(cli, second)
	defer w2.Leave(nil)
	// ...while a late waiter on the first incarnation is woken at once.
	late := watchwait.Join(cli, first)
	defer late.Leave(nil)
	if !isDeleted(late) {
		t.Error("waiter on a deleted incarnation not woken at Join")
	}
	if isDeleted(w2) {
		t.Fatal("waiter on the live incarnation woken")
	}
	// An overwrite keeps the incarnation.
	put(t, c, "/p/a")
	del(t, c, "/p/a")
	waitDeleted(t, w2)
}

// A waiter whose observation predates a compaction, and whose key was
// deleted before it, is still woken: the watch fails as compacted and the
// key is read again.
func TestStaleObservationAcrossCompaction(t *testing.T) {
	c := quietlocktest.New(t)
	cli := c.NewClient()
	o := put(t, c, "/p/a")
	del(t, c, "/p/a")
	for range 5 {
		put(t, c, "/p/other")
	}
	if _, err := c.Client.Compact(t.Context(), c.Stats().Revision); err != nil {
		t.Fatal(err)
	}
	w := watchwait.Join(cli, o)
	defer w.Leave(nil)
	waitDeleted(t, w)

	// And one whose key is still alive keeps waiting after the re-read.
	alive := put(t, c, "/p/b")
	for range 5 {
		put(t, c, "/p/other")
	}
	if _, err := c.Client.Compact(t.Context(), c.Stats().Revision); err != nil {
		t.Fatal(err)
	}
	w2 := watchwait.Join(cli, alive) // seen before the compacted revisions
	defer w2.Leave(nil)
	time.Sleep(200 * time.Millisecond) // let the compacted watch fail and re-read
	if isDeleted(w2) {
		t.Fatal("waiter on a live key woken after compaction")
	}
	del(t, c, "/p/b")
	waitDeleted(t, w2)
}

// Woken waiters take turns, and each sees the owner the previous one
// reported, if it was seen after the deletion and under the same prefix.
func TestTurns(t *testing.T) {
	c := quietlocktest.New(t)
	cli := c.NewClient()
	o := put(t, c, "/p/a")
	elsewhere := o
	elsewhere.Prefix = "/other/" // the same key seen as owner under a nested prefix
	a, b, x := watchwait.Join(cli, o), watchwait.Join(cli, o), watchwait.Join(cli, elsewhere)
	defer a.Leave(nil)
	defer b.Leave(nil)
	del(t, c, "/p/a")
	waitDeleted(t, a)
	waitDeleted(t, b)

	hint, err := a.Turn(t.Context())
	if err != nil || hint != nil {
		t.Fatalf("first turn: got %v, %v; want no hint", hint, err)
	}
	// b cannot attempt while a does.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	if _, err := b.Turn(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second turn while the first is held: got %v, want %v", err, context.DeadlineExceeded)
	}
	cancel()
	next := put(t, c, "/p/b")
	a.Leave(&next)
	hint, err = b.Turn(t.Context())
	if err != nil || hint == nil || *hint != next {
		t.Fatalf("second turn: got %v, %v; want hint %v", hint, err, next)
	}
	b.Leave(hint)
	hint, err = x.Turn(t.Context())
	if err != nil || hint != nil {
		t.Fatalf("turn under another prefix: got %v, %v; want no hint", hint, err)
	}
	x.Leave(nil)
}

// Closing the client wakes its waiters with ErrClientClosed.
func TestClientClosed(t *testing.T) {
	c := quietlocktest.New(t)
	cli, err := clientv3.New(quietlocktest.ClientConfig(c.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	w := watchwait.Join(cli, put(t, c, "/p/a"))
	defer w.Leave(nil)
	cli.Close()
	select {
	case <-w.Deleted():
	case <-t.Context().Done():
		t.Fatal("waiter not woken by client close")
	}
	if err := w.Err(); !errors.Is(err, watchwait.ErrClientClosed) {
		t.Errorf("Err: got %v, want %v", err, watchwait.ErrClientClosed)
	}
}
