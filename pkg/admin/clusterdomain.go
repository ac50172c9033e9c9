package admin

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// ParseClusterDomain checks --cluster-domain, the DNS suffix of the
// cluster's service names, which meshd and the node agent both take: a DNS
// name (RFC 1123 subdomain, any case, trailing dot or not). It returns it
// in lower case without the dot.
func ParseClusterDomain(s string) (string, error) {
	d := strings.ToLower(strings.TrimSuffix(s, "."))
	errs := validation.IsDNS1123Subdomain(d)
	if len(errs) == 0 {
		for _, l := range strings.Split(d, ".") {
			errs = append(errs, validation.IsDNS1123Label(l)...) // 63 bytes at most
		}
	}
	if len(errs) > 0 {
		return "", fmt.Errorf("--cluster-domain %q is not a DNS name: %s", s, strings.Join(errs, "; "))
	}
	return d, nil
}
