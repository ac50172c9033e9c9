package testutil

import (
	"bufio"
	"errors"
	"os"
	"strings"
)

// ErrNoCgroup2 is returned when no cgroup v2 hierarchy is mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 mount in /proc/mounts: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)")

// Cgroup2Root returns the mount point of the cgroup v2 hierarchy, read from
// /proc/mounts. Machines in hybrid mode mount it away from /sys/fs/cgroup, so
// it is never assumed.
func Cgroup2Root() (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	if err := s.Err(); err != nil {
		return "", err
	}
	return "", ErrNoCgroup2
}
