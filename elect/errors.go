package elect

import "errors"

// The methods of [Election] return etcd's own sentinels, unwrapped, where
// they mirror etcd's API: concurrency.ErrElectionNotLeader from
// [Election.Proclaim], concurrency.ErrElectionNoLeader from
// [Election.Leader], and concurrency.ErrSessionExpired when the session has
// ended. When a method's context ends, it returns the context's error
// unwrapped (context.Canceled or context.DeadlineExceeded), as etcd's do, so
// that == works. Other errors from etcd are wrapped: test them with
// errors.Is.
var (
	// ErrNilSession is returned by every method of an Election made with a
	// nil session.
	ErrNilSession = errors.New("elect: nil session")

	// ErrEmptyPrefix is returned by every method of an Election made with an
	// empty prefix.
	ErrEmptyPrefix = errors.New("elect: empty prefix")

	// ErrBadLeaderKey is returned by every method of an Election made by
	// [ResumeElection] with a leader key that is not under its prefix, or a
	// revision that is not positive.
	ErrBadLeaderKey = errors.New("elect: leader key not under the prefix")

	// ErrNilClient is returned by [Run] without a client.
	ErrNilClient = errors.New("elect: nil client")

	// ErrEmptyIdentity is returned by [Run] without an identity: the
	// identity is the value a leader proclaims, and an empty one would read
	// as "no leader" to observers.
	ErrEmptyIdentity = errors.New("elect: empty identity")

	// ErrClientClosed is returned by [Run] when its client is closed.
	ErrClientClosed = errors.New("elect: client closed")

	// ErrBadOption is wrapped by the error [Run] returns for an invalid
	// option.
	ErrBadOption = errors.New("elect: invalid option")

	// ErrLeadershipLost is the cause (see context.Cause) of a term's
	// context, wrapped with the reason the term ended: [ErrLeaseDeadline],
	// [ErrKeyDeleted], concurrency.ErrSessionExpired, [ErrResigned], or a
	// watch error.
	ErrLeadershipLost = errors.New("elect: leadership lost")

	// ErrLeaseDeadline is the reason a term ended when no keepalive was
	// answered in time: the lease might expire within the safety margin, so
	// the leader stepped down before anyone else could win.
	ErrLeaseDeadline = errors.New("elect: lease deadline reached")

	// ErrKeyDeleted is the reason a term ended when the leader's key was
	// deleted by someone else.
	ErrKeyDeleted = errors.New("elect: leader key deleted")

	// ErrResigned is the reason a term ended because [Run]'s context ended
	// and the leader resigned.
	ErrResigned = errors.New("elect: resigned")
)
