package ebpf_test

import (
	"log"
	"net"
	"net/netip"

	"github.com/meshlet/meshlet/node-agent/ebpf"
)

// The node agent's use of the data path: check the kernel, load (or adopt
// after a restart), enroll a pod once its listeners are open, steer its
// inbound traffic, and find where each captured connection was going.
func Example() {
	if err := ebpf.CheckKernel(); err != nil {
		log.Fatal(err) // names every missing feature
	}
	dp, err := ebpf.Load(ebpf.Options{
		CgroupPath: "/sys/fs/cgroup", // the cgroup v2 root
		AgentMark:  0x539,            // the agent's own sockets carry it
	})
	if err != nil {
		log.Fatal(err)
	}
	defer dp.Close() // pins stay: capture goes on while the agent restarts

	const nsPath = "/var/run/netns/pod-1"
	// Open the pod's 15001/15006/15008 listeners in nsPath first: from
	// Enroll on, its connects go to 127.0.0.1:15001.
	cookie, err := ebpf.NetnsCookie(nsPath)
	if err != nil {
		log.Fatal(err)
	}
	if err := dp.Enroll(cookie, ebpf.Pod{WorkloadID: 1, IPv4: netip.MustParseAddr("10.0.0.7")}); err != nil {
		log.Fatal(err)
	}
	if err := dp.AttachPodIngress(nsPath, "eth0", ebpf.IngressOptions{}); err != nil {
		log.Fatal(err)
	}

	var outbound net.Listener // the pod's 15001 listener
	if outbound == nil {
		return
	}
	c, err := outbound.Accept()
	if err != nil {
		log.Fatal(err)
	}
	dst, err := dp.OriginalDst(c) // e.g. 10.96.0.10:80, a service VIP
	if err != nil {
		c.Close() // not captured: refuse
		return
	}
	log.Printf("%s wants %s", c.RemoteAddr(), dst)
}
