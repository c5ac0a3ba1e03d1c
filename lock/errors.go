package lock

import (
	"errors"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// The methods of [Mutex] return etcd's own sentinels where they mirror
// etcd's API, unwrapped, so that code written against concurrency.Mutex
// keeps working whether it compares with == or errors.Is:
// concurrency.ErrLocked from [Mutex.TryLock] when the lock is held elsewhere,
// and concurrency.ErrSessionExpired when the session has ended. When a
// method's context ends, it returns the context's error unwrapped
// (context.Canceled or context.DeadlineExceeded), as etcd's do.
var (
	// ErrNilSession is returned by every method of a Mutex made with a nil
	// session.
	ErrNilSession = errors.New("lock: nil session")

	// ErrEmptyPrefix is returned by every method of a Mutex made with an
	// empty prefix.
	ErrEmptyPrefix = errors.New("lock: empty prefix")

	// ErrNotHeld is returned by [Mutex.Unlock] when the Mutex holds nothing,
	// and by [Mutex.Err] before the first hold. It is etcd's
	// concurrency.ErrLockReleased itself, which etcd's Unlock returns in the
	// same case, so that both == and errors.Is match either name.
	ErrNotHeld = concurrency.ErrLockReleased

	// ErrBadOption is wrapped by the error every method of a Mutex returns
	// when [NewMutex] was given an invalid option, or its metrics could not
	// be registered.
	ErrBadOption = errors.New("lock: invalid option")

	// ErrUnlocked is the [Mutex.Err] of a hold ended by [Mutex.Unlock].
	ErrUnlocked = errors.New("lock: unlocked")

	// ErrKeyDeleted is the [Mutex.Err] of a hold whose key was deleted by
	// someone else, or was already gone when Unlock came.
	ErrKeyDeleted = errors.New("lock: key deleted")
)
