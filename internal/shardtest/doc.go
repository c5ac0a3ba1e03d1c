// Package shardtest tests package shard against a real etcd server. It is
// a package of its own so that the shard package's tests import nothing a
// service that imports shard would have to resolve.
package shardtest
