package hbone

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ForwardedHeader carries the client's original source address.
const ForwardedHeader = "Forwarded"

// formatForwarded returns the Forwarded header value for src.
func formatForwarded(src netip.AddrPort) string {
	return `for="` + src.String() + `"`
}

// parseForwarded reads the first for= element of a Forwarded header value.
func parseForwarded(v string) (netip.AddrPort, error) {
	if v == "" {
		return netip.AddrPort{}, errors.New("no Forwarded header")
	}
	first, _, _ := strings.Cut(v, ",")
	for _, pair := range strings.Split(first, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		val = strings.Trim(val, `"`)
		if ap, err := netip.ParseAddrPort(val); err == nil {
			return ap, nil
		}
		if a, err := netip.ParseAddr(strings.Trim(val, "[]")); err == nil {
			return netip.AddrPortFrom(a, 0), nil
		}
		return netip.AddrPort{}, fmt.Errorf("parse Forwarded for=%q: not an ip or ip:port", val)
	}
	return netip.AddrPort{}, fmt.Errorf("parse Forwarded %q: no for= element", v)
}
