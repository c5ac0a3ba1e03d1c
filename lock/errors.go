package lock

import (
	"errors"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// The methods of [Mutex] return etcd's own sentinels where they mirror
// etcd's API, unwrapped, so that code written against concurrency.Mutex
// keeps working whether it compares with == or errors.Is:
// concurrency.ErrLocked from [Mutex.TryLock] when the lock is held elsewhere,
// and concurrency.ErrSessionExpired when the session has ended.
var (
	// ErrNilSession is returned by every method of a Mutex made with a nil
	// session.
	ErrNilSession = errors.New("lock: nil session")

	// ErrEmptyPrefix is returned by every method of a Mutex made with an
	// empty prefix.
	ErrEmptyPrefix = errors.New("lock: empty prefix")

	// ErrNotHeld is returned by [Mutex.Unlock] when the Mutex holds nothing,
	// and by [Mutex.Err] before the first hold. It matches
	// concurrency.ErrLockReleased with errors.Is, as etcd's Unlock returns
	// that in the same case.
	ErrNotHeld error = &aliasError{msg: "lock: not held", alias: concurrency.ErrLockReleased}

	// ErrUnlocked is the [Mutex.Err] of a hold ended by [Mutex.Unlock].
	ErrUnlocked = errors.New("lock: unlocked")

	// ErrKeyDeleted is the [Mutex.Err] of a hold whose key was deleted by
	// someone else, or was already gone when Unlock came.
	ErrKeyDeleted = errors.New("lock: key deleted")
)

// aliasError is a sentinel of this package that also matches another
// package's sentinel for the same condition.
type aliasError struct {
	msg   string
	alias error
}

func (e *aliasError) Error() string { return e.msg }
func (e *aliasError) Unwrap() error { return e.alias }
