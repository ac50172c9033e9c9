//go:build !linux

package testutil

import "errors"

// ErrNoCgroup2 is returned when no cgroup v2 hierarchy is mounted.
var ErrNoCgroup2 = errors.New("cgroup v2 is not supported on this OS")

// Cgroup2Root returns ErrNoCgroup2: cgroups are Linux only.
func Cgroup2Root() (string, error) { return "", ErrNoCgroup2 }
