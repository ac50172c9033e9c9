//go:build !linux

package agent

import (
	"context"
	"errors"
)

// WatchHostAddrs needs netlink (Linux).
func (a *Agent) WatchHostAddrs(ctx context.Context, netnsPath string) error {
	return errors.New("watch the node's addresses: Linux only")
}
