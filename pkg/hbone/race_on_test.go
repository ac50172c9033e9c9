//go:build race

package hbone

// raceEnabled: the race detector is on; it adds allocations and makes
// sync.Pool drop items at random, so counts of either mean nothing.
const raceEnabled = true
