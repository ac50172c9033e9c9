package main

import (
	"context"
	"log"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/meshlet/meshlet/node-agent/agent"
	"github.com/meshlet/meshlet/node-agent/dnsproxy"
	"github.com/meshlet/meshlet/node-agent/ebpf"
	"github.com/meshlet/meshlet/node-agent/kube"
	"github.com/meshlet/meshlet/node-agent/mesh"
)

// clusterDNS finds the resolver the DNS proxy forwards to when it does not
// know the one the pod asked: --dns-upstream when set, else the kube-dns
// Service of kube-system (CoreDNS), looked up again at most every 30s until
// found.
type clusterDNS struct {
	client *kube.Client
	fixed  string

	mu      sync.Mutex
	addr    string
	checked time.Time
}

func (c *clusterDNS) upstream() string {
	if c.fixed != "" {
		return c.fixed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.addr != "" || time.Since(c.checked) < 30*time.Second {
		return c.addr
	}
	c.checked = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	svc, err := c.client.GetService(ctx, "kube-system", "kube-dns")
	if err != nil || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == "None" {
		log.Printf("dns proxy: find the cluster DNS (kube-system/kube-dns): %v; pass --dns-upstream", err)
		return ""
	}
	c.addr = net.JoinHostPort(svc.Spec.ClusterIP, "53")
	return c.addr
}

// dnsProxies starts each enrolled pod's DNS proxy, which answers mesh names
// (also with the pod's search domains in clusterDomain appended) and
// forwards names the mesh does not know to the resolver the pod asked, as
// dp recorded it; nil (no capture of the pods' DNS) without the mesh, whose
// model it answers from.
func dnsProxies(m agent.Mesh, dp *ebpf.Datapath, client *kube.Client, upstream, clusterDomain string, disabled bool) func(nsPath, namespace string) (agent.DNSServer, error) {
	mm, ok := m.(*mesh.Mesh)
	if !ok || disabled {
		return nil
	}
	up := &clusterDNS{client: client, fixed: upstream}
	return func(nsPath, namespace string) (agent.DNSServer, error) {
		s, err := dnsproxy.Start(dnsproxy.Options{
			Netns:         nsPath,
			Lookup:        func(name string) ([]netip.Addr, bool) { return mm.LookupHost(namespace, name) },
			SearchDomains: dnsproxy.KubeSearchDomains(namespace, clusterDomain),
			Upstream:      up.upstream,
			OriginalDst:   dp.SockOriginalDst,
			Mark:          agent.DefaultAgentMark,
			Errorf:        log.Printf,
		})
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}
