// Package clientv3 is a stub of etcd's client for the analyzer's tests.
package clientv3

import "context"

type Client struct{}

type OpOption func()

func WithPrefix() OpOption { return nil }

type WatchResponse struct{}

type WatchChan <-chan WatchResponse

func (c *Client) Watch(ctx context.Context, key string, opts ...OpOption) WatchChan { return nil }
