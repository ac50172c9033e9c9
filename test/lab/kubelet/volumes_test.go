package kubelet

import "testing"

func TestHostPathSource(t *testing.T) {
	const node, cg = "/repo/.lab/nodes/lab-node-1", "/sys/fs/cgroup/unified/meshlet-lab/lab-node-1"
	tests := []struct{ in, want string }{
		{"/etc/cni/net.d", node + "/etc/cni/net.d"},
		{"/opt/cni/bin", node + "/opt/cni/bin"},
		{"/var/run/netns", node + "/var/run/netns"},
		{"/run/netns", node + "/var/run/netns"},
		{"/var/run/meshlet/", node + "/var/run/meshlet"},
		{"/sys/fs/bpf", node + "/sys/fs/bpf"},
		{"/sys/fs/bpf/meshlet", node + "/sys/fs/bpf/meshlet"},
		{"/sys/fs/cgroup", cg},
		{"/sys/fs/cgroup/kubepods", cg + "/kubepods"},
		{"/proc", "/proc"},
		{"/sys/kernel", "/sys/kernel"},
		{"/lib/modules", "/lib/modules"},
		{"/etc/../../etc/passwd", node + "/etc/passwd"},
		{"/procfoo", node + "/procfoo"},
	}
	for _, tt := range tests {
		if got := hostPathSource(node, cg, tt.in); got != tt.want {
			t.Errorf("hostPathSource(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}
