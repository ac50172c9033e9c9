package kubelet

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
)

// Config is one lab node's kubelet configuration; the lab writes it as JSON to
// .lab/nodes/<node>/kubelet.json.
type Config struct {
	NodeName      string            // Node object name, e.g. "lab-node-1"; required
	NodeIP        string            // InternalIP on the lab bridge; required
	Kubeconfig    string            // node credentials (system:node:<name>); required
	NodeRoot      string            // .lab/nodes/<node>: hostPath volumes resolve under it; required, absolute
	CgroupRoot    string            // absolute cgroup v2 dir of this node's slice; required
	CNIConfDir    string            // NodeRoot/etc/cni/net.d when empty
	CNIBinDir     string            // NodeRoot/opt/cni/bin when empty (ptp, host-local, loopback are installed there)
	ClusterDNS    string            // nameserver in pods' resolv.conf; 198.18.128.10 when empty
	ClusterDomain string            // cluster.local when empty
	Images        map[string]string // image reference (tag and digest ignored) -> absolute path of a local binary
	ImagesFile    string            // JSON image table re-read when an image is not in Images (lab build adds images to a running lab); optional
	ServingCert   string            // PEM certificate of the kubelet API on NodeIP:10250 (kubectl logs, port-forward); with ServingKey and ClientCA, else no API
	ServingKey    string            // its key
	ClientCA      string            // CA of the client certificates allowed in (the API server's kubelet client)
	LogDir        string            // where each container's stdout/stderr file goes; NodeRoot/var/log/pods when empty
}

// withDefaults checks c and fills the optional fields.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("missing NodeName: set the node's name, e.g. lab-node-1"))
	}
	if net.ParseIP(c.NodeIP) == nil {
		errs = append(errs, fmt.Errorf("NodeIP %q is not an IP address: set the node's address on the lab bridge", c.NodeIP))
	}
	if c.Kubeconfig == "" {
		errs = append(errs, errors.New("missing Kubeconfig: set the path of the node's kubeconfig"))
	}
	if !filepath.IsAbs(c.NodeRoot) {
		errs = append(errs, fmt.Errorf("NodeRoot %q is not an absolute path: set it to .lab/nodes/<node>", c.NodeRoot))
	}
	if !filepath.IsAbs(c.CgroupRoot) {
		errs = append(errs, fmt.Errorf("CgroupRoot %q is not an absolute path: set it to the node's cgroup v2 directory", c.CgroupRoot))
	}
	for img, bin := range c.Images {
		if !filepath.IsAbs(bin) {
			errs = append(errs, fmt.Errorf("image %q maps to %q: want an absolute path of a binary", img, bin))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("invalid kubelet config: %w", err)
	}
	if c.CNIConfDir == "" {
		c.CNIConfDir = filepath.Join(c.NodeRoot, "etc/cni/net.d")
	}
	if c.CNIBinDir == "" {
		c.CNIBinDir = filepath.Join(c.NodeRoot, "opt/cni/bin")
	}
	if c.ClusterDNS == "" {
		c.ClusterDNS = "198.18.128.10"
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = "cluster.local"
	}
	if c.LogDir == "" {
		c.LogDir = filepath.Join(c.NodeRoot, "var/log/pods")
	}
	return c, nil
}
