package lock_test

import (
	"reflect"
	"testing"

	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/goleak"

	"github.com/quietlock/quietlock/lock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Every method of etcd's *concurrency.Mutex exists on *lock.Mutex with the
// same signature, so switching is a change of import.
func TestMirrorsEtcdMutex(t *testing.T) {
	theirs := reflect.TypeFor[*concurrency.Mutex]()
	ours := reflect.TypeFor[*lock.Mutex]()
	for i := range theirs.NumMethod() {
		want := theirs.Method(i)
		got, ok := ours.MethodByName(want.Name)
		if !ok {
			t.Errorf("lock.Mutex has no method %s", want.Name)
			continue
		}
		// Compare without the receiver.
		if g, w := signature(got.Type), signature(want.Type); g != w {
			t.Errorf("%s: got %s, want %s", want.Name, g, w)
		}
	}
}

func signature(f reflect.Type) string {
	s := "("
	for i := 1; i < f.NumIn(); i++ {
		s += f.In(i).String() + ","
	}
	s += ")("
	for i := range f.NumOut() {
		s += f.Out(i).String() + ","
	}
	return s + ")"
}
