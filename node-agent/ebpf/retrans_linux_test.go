package ebpf

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/meshlet/meshlet/node-agent/netns"
)

// TestRetransmits loses a captured connection's first data segment (an
// nftables rule in the pod netns drops it on input for a while) and checks
// that the workload's retransmit counter moves while the byte count stays
// the application's.
func TestRetransmits(t *testing.T) {
	s := newSetup(t, Options{})
	const wl = 9
	pod := newNetns(t, "rtx")
	cookie, err := NetnsCookie(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dp.Enroll(cookie, Pod{WorkloadID: wl}); err != nil {
		t.Fatal(err)
	}
	outbound := accepted(t, listen(t, pod, "127.0.0.1:15001", agentMark))
	c, err := netns.Dial(context.Background(), pod, remoteIP+":8080", netns.DialOptions{Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := wait(t, outbound, "15001")
	before := s.statsOf(t, wl)

	mustRun(t, "ip", "netns", "exec", "mlbpf-rtx", "nft", "add table inet mlbpf; add chain inet mlbpf in { type filter hook input priority 0; }; add rule inet mlbpf in tcp dport 15001 meta length gt 500 drop")
	const sent = 1000
	if _, err := c.Write(make([]byte, sent)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // at least one retransmission timeout (200ms minimum)
	mustRun(t, "ip", "netns", "exec", "mlbpf-rtx", "nft", "delete table inet mlbpf")
	_ = srv.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(srv, make([]byte, sent)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.Close()
	var after Stats
	eventually(t, "the connection to be counted closed", func() bool {
		after = s.statsOf(t, wl)
		return after.ConnsClosed == before.ConnsClosed+1
	})
	if after.Retransmits <= before.Retransmits {
		t.Errorf("Retransmits %d -> %d; want it to grow", before.Retransmits, after.Retransmits)
	}
	if got := after.BytesSent - before.BytesSent; got != sent {
		t.Errorf("BytesSent grew by %d; want %d", got, sent)
	}
}
