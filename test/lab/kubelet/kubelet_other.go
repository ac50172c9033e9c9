//go:build !linux

package kubelet

import (
	"context"
	"errors"
)

// ErrNotSupported is returned by Run on operating systems other than Linux.
var ErrNotSupported = errors.New("the lab kubelet needs Linux (network namespaces, cgroup v2, mount namespaces)")

// Run returns ErrNotSupported: the lab runs on Linux only.
func Run(ctx context.Context, cfg Config) error { return ErrNotSupported }
