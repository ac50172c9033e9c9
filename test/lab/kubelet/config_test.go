package kubelet

import (
	"strings"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	good := Config{NodeName: "lab-node-1", NodeIP: "198.18.0.11", Kubeconfig: "/x/kubeconfig",
		NodeRoot: "/repo/.lab/nodes/lab-node-1", CgroupRoot: "/sys/fs/cgroup/unified/meshlet-lab/lab-node-1"}
	c, err := good.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.CNIConfDir != good.NodeRoot+"/etc/cni/net.d" || c.CNIBinDir != good.NodeRoot+"/opt/cni/bin" ||
		c.ClusterDNS != "198.18.128.10" || c.ClusterDomain != "cluster.local" {
		t.Errorf("withDefaults() = %+v; want the lab's defaults", c)
	}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"no node name", func(c *Config) { c.NodeName = "" }, "NodeName"},
		{"bad IP", func(c *Config) { c.NodeIP = "node-1" }, `NodeIP "node-1"`},
		{"relative root", func(c *Config) { c.NodeRoot = ".lab/nodes/x" }, "NodeRoot"},
		{"relative image", func(c *Config) { c.Images = map[string]string{"meshlet.dev/echo": "bin/echo"} }, "meshlet.dev/echo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mutate(&c)
			if _, err := c.withDefaults(); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("withDefaults() error = %v; want one naming %s", err, tt.wantErr)
			}
		})
	}
}
