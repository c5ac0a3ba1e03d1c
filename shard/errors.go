package shard

import "errors"

var (
	// ErrNilClient is returned by [New] without a client.
	ErrNilClient = errors.New("shard: nil client")

	// ErrEmptyPrefix is returned by [New] without a prefix.
	ErrEmptyPrefix = errors.New("shard: empty prefix")

	// ErrEmptyIdentity is returned by [New] without an identity: it is the
	// value a leader proclaims, and an empty one reads as "no leader".
	ErrEmptyIdentity = errors.New("shard: empty identity")

	// ErrBadShard is wrapped by the error [Runner.Add] and [Runner.Remove]
	// return for an empty shard name or one that contains "/" (a shard's
	// election prefix must not be the prefix of another's).
	ErrBadShard = errors.New("shard: invalid shard name")

	// ErrBadOption is wrapped by the error [New] returns for an invalid
	// option.
	ErrBadOption = errors.New("shard: invalid option")

	// ErrRunning is returned by [Runner.Run] while another call of Run on
	// the same Runner has not returned.
	ErrRunning = errors.New("shard: already running")

	// ErrClientClosed is returned by [Runner.Run] when its client is closed.
	ErrClientClosed = errors.New("shard: client closed")

	// ErrRebalanced is the reason a term ended because the shard was handed
	// to another process to balance the leaders.
	ErrRebalanced = errors.New("shard: handed over to balance the leaders")

	// ErrRemoved is the reason a term ended because its shard was removed
	// with [Runner.Remove].
	ErrRemoved = errors.New("shard: shard removed")
)
