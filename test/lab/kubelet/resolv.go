package kubelet

import (
	"fmt"
	"strings"
)

// resolvConf is a pod's /etc/resolv.conf with ClusterFirst DNS.
func resolvConf(namespace, dns, domain string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nameserver %s\n", dns)
	fmt.Fprintf(&b, "search %s.svc.%s svc.%s %s\n", namespace, domain, domain, domain)
	b.WriteString("options ndots:5\n")
	return b.String()
}
