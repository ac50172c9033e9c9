package enroll

import "errors"

// FindOptions says where to look for pods' network namespaces.
type FindOptions struct {
	// NetnsDir holds the runtime's netns bind mounts. Empty means
	// /var/run/netns.
	NetnsDir string
	// ProcDir is the host's procfs. Empty means /proc.
	ProcDir string
}

// ErrNetnsNotFound means no network namespace holds the pod's addresses.
var ErrNetnsNotFound = errors.New("pod network namespace not found")
