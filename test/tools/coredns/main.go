// Command coredns is the lab's cluster DNS: CoreDNS built from its Go module
// with only the plugins a Kubernetes cluster DNS needs. It must not include
// plugins that reach outside the lab (no forward upstream is configured by the
// lab; the forward plugin is compiled in only so a Corefile naming it parses).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// directives is the plugin chain order; it follows CoreDNS's plugin.cfg order
// for the plugins compiled in here.
var directives = []string{
	"reload",
	"health",
	"ready",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
	"loop",
	"forward",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
