//go:build !race

package soaktest_test

// raceEnabled reports whether the race detector is on.
const raceEnabled = false
