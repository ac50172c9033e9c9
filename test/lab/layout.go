package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Fixed lab addresses and names (see lab-shared.md in the project briefs).
const (
	BridgeName    = "mlab0"                  // the lab bridge in the root netns
	BridgeIP      = "198.18.0.1"             // the bridge address; kube-apiserver listens here
	BridgeCIDR    = "198.18.0.1/24"          // bridge address with prefix
	NetnsPrefix   = "mlab-"                  // node netns names: mlab-<node>
	VethPrefix    = "mlabv"                  // root-side node veths: mlabv<i>
	CgroupSlice   = "meshlet-lab"            // cgroup v2 dir holding one dir per node
	ClusterCIDR   = "198.18.64.0/18"         // pod addresses, one /24 per node
	ServiceCIDR   = "198.18.128.0/20"        // ClusterIPs
	KubernetesSvc = "198.18.128.1"           // the kubernetes Service ClusterIP
	ClusterDNS    = "198.18.128.10"          // the kube-dns Service ClusterIP
	ClusterDomain = "cluster.local"          // DNS domain of the cluster
	APIPort       = 6443                     // kube-apiserver secure port
	EtcdClientURL = "http://127.0.0.1:32379" // embedded etcd, loopback only
	EtcdPeerURL   = "http://127.0.0.1:32380" // embedded etcd peer URL, loopback only
	MaxNodes      = 20                       // node IPs are 198.18.0.(10+i)
)

// NodeName is the name of node i (1-based).
func NodeName(i int) string { return fmt.Sprintf("lab-node-%d", i) }

// NodeIP is the bridge address of node i (1-based).
func NodeIP(i int) string { return fmt.Sprintf("198.18.0.%d", 10+i) }

// NodeNetns is the network namespace name of a node.
func NodeNetns(node string) string { return NetnsPrefix + node }

// Layout is the on-disk state of one lab: everything below <repo>/.lab.
type Layout struct {
	Dir string // absolute path of .lab
}

// FindLayout locates .lab: $MESHLET_LAB_DIR when set, else <repo>/.lab where
// <repo> is found by walking up from the working directory to the directory
// whose test/go.mod exists.
func FindLayout() (Layout, error) {
	if d := os.Getenv("MESHLET_LAB_DIR"); d != "" {
		abs, err := filepath.Abs(d)
		if err != nil {
			return Layout{}, fmt.Errorf("resolve MESHLET_LAB_DIR: %w", err)
		}
		return Layout{Dir: abs}, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return Layout{}, err
	}
	return Layout{Dir: filepath.Join(root, ".lab")}, nil
}

// RepoRoot walks up from the working directory to the meshlet checkout (the
// directory holding test/go.mod).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "test", "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find the meshlet checkout: no test/go.mod above the working directory; run from inside the repository or set MESHLET_LAB_DIR")
		}
		dir = parent
	}
}

// Repo is the checkout holding this lab (the parent of .lab).
func (l Layout) Repo() string { return filepath.Dir(l.Dir) }

// Path joins elems below .lab.
func (l Layout) Path(elems ...string) string {
	return filepath.Join(append([]string{l.Dir}, elems...)...)
}

// Kubeconfig is the admin kubeconfig.
func (l Layout) Kubeconfig() string { return l.Path("kubeconfig") }

// Bin is the path of a lab binary in .lab/bin.
func (l Layout) Bin(name string) string { return l.Path("bin", name) }

// Logs is the path of a log file in .lab/logs.
func (l Layout) Logs(name string) string { return l.Path("logs", name) }

// PKI is the path of a file in .lab/pki.
func (l Layout) PKI(name string) string { return l.Path("pki", name) }

// NodeRoot is .lab/nodes/<node>.
func (l Layout) NodeRoot(node string) string { return l.Path("nodes", node) }

// PidFile is the supervisor's pid file.
func (l Layout) PidFile() string { return l.Path("supervisor.pid") }

// StateFile is the record of everything the lab created.
func (l Layout) StateFile() string { return l.Path("state.json") }
