//go:build !linux

package enroll

import (
	"errors"
	"net/netip"
)

// FindNetns is not supported off Linux.
func FindNetns(FindOptions, string, []netip.Addr) (string, error) {
	return "", errors.New("find pod netns: network namespaces are not supported on this OS")
}
