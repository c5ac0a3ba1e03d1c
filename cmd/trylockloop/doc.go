// Command trylockloop reports calls of etcd's concurrency.Mutex.TryLock
// that can run repeatedly: in a loop, on every event of an etcd watch, or in
// a function that a loop of the same package calls. Each failed TryLock
// writes 2 revisions and 2 raft entries; see package
// github.com/quietlock/quietlock/analysis/trylockloop for what is reported
// and how far the analysis looks.
//
// Run it on its own:
//
//	go run github.com/quietlock/quietlock/cmd/trylockloop@latest ./...
//
// or as a vet tool:
//
//	go install github.com/quietlock/quietlock/cmd/trylockloop@latest
//	go vet -vettool=$(which trylockloop) ./...
package main
