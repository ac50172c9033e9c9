package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// conflistName is the file the kubelet writes into the node's CNI conf dir.
const conflistName = "10-mlab.conflist"

// cniPluginsModule is where ptp, host-local and loopback are built from; the
// version is the one test/go.mod requires.
const cniPluginsModule = "github.com/containernetworking/plugins"

var cniPlugins = map[string]string{
	"ptp":        cniPluginsModule + "/plugins/main/ptp",
	"host-local": cniPluginsModule + "/plugins/ipam/host-local",
	"loopback":   cniPluginsModule + "/plugins/main/loopback",
}

// nodeConflist is the node's network: ptp veths with addresses from the
// node's pod CIDR, no masquerading (nothing leaves the lab).
func nodeConflist(podCIDR, dataDir string) ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "mlab",
		"plugins": []any{map[string]any{
			"type":   "ptp",
			"ipMasq": false,
			"mtu":    1500,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": podCIDR}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": dataDir,
			},
		}},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// writeConflist writes the node's conflist unless the conf dir already has one.
func writeConflist(dir, podCIDR, dataDir string) (bool, error) {
	if _, err := os.Stat(filepath.Join(dir, conflistName)); err == nil {
		return false, nil
	}
	b, err := nodeConflist(podCIDR, dataDir)
	if err != nil {
		return false, err
	}
	tmp := filepath.Join(dir, "."+conflistName+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return false, fmt.Errorf("write CNI config: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, conflistName)); err != nil {
		return false, fmt.Errorf("install CNI config: %w", err)
	}
	return true, nil
}

// firstConflist loads the first CNI config in dir in lexical order, as
// containerd does (a .conf is wrapped into a list).
func firstConflist(dir string) (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("list CNI configs in %s: %w", dir, err)
	}
	sort.Strings(files)
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), ".") {
			continue
		}
		if strings.HasSuffix(f, ".conflist") {
			l, err := libcni.NetworkConfFromFile(f)
			if err != nil {
				return nil, fmt.Errorf("load CNI config %s: %w", f, err)
			}
			return l, nil
		}
		// A single-plugin .conf: wrap it in a list, as containerd does.
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CNI config %s: %w", f, err)
		}
		pc, err := libcni.NetworkPluginConfFromBytes(b)
		if err != nil {
			return nil, fmt.Errorf("load CNI config %s: %w", f, err)
		}
		lb, _ := json.Marshal(map[string]any{"cniVersion": pc.Network.CNIVersion, "name": pc.Network.Name, "plugins": []json.RawMessage{b}})
		return &libcni.NetworkConfigList{Name: pc.Network.Name, CNIVersion: pc.Network.CNIVersion, Plugins: []*libcni.PluginConfig{pc}, Bytes: lb}, nil
	}
	return nil, fmt.Errorf("no CNI config in %s yet: the kubelet writes %s once the node has a pod CIDR", dir, conflistName)
}

// cniNet runs CNI plugins for one node.
type cniNet struct {
	confDir string
	cni     *libcni.CNIConfig
}

func newCNINet(confDir, binDir, cacheDir string) *cniNet {
	return &cniNet{confDir: confDir, cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, nil)}
}

// runtimeConf is what containerd passes for a pod sandbox.
func runtimeConf(namespace, name, uid, id, netns, ifname string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      ifname,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", namespace},
			{"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", uid},
		},
	}
}

var loopbackConf = []byte(`{"cniVersion":"1.0.0","name":"cni-loopback","type":"loopback"}`)

// add wires a pod's netns: loopback, then the node's first conflist on eth0.
// It returns the pod's IPv4 address.
func (c *cniNet) add(ctx context.Context, namespace, name, uid, id, netns string) (string, error) {
	lo, err := libcni.NetworkPluginConfFromBytes(loopbackConf)
	if err != nil {
		return "", fmt.Errorf("loopback config: %w", err)
	}
	if _, err := c.cni.AddNetwork(ctx, lo, runtimeConf(namespace, name, uid, id, netns, "lo")); err != nil {
		return "", fmt.Errorf("CNI ADD loopback: %w", err)
	}
	list, err := firstConflist(c.confDir)
	if err != nil {
		return "", err
	}
	res, err := c.cni.AddNetworkList(ctx, list, runtimeConf(namespace, name, uid, id, netns, "eth0"))
	if err != nil {
		return "", fmt.Errorf("CNI ADD %s: %w", list.Name, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return "", fmt.Errorf("read CNI result of %s: %w", list.Name, err)
	}
	for _, ip := range r.IPs {
		if ip.Address.IP.To4() != nil {
			return ip.Address.IP.String(), nil
		}
	}
	return "", fmt.Errorf("CNI %s gave the pod no IPv4 address", list.Name)
}

// del undoes add with the node's current first conflist (as containerd does).
func (c *cniNet) del(ctx context.Context, namespace, name, uid, id, netns string) error {
	var errs []error
	if list, err := firstConflist(c.confDir); err == nil {
		if err := c.cni.DelNetworkList(ctx, list, runtimeConf(namespace, name, uid, id, netns, "eth0")); err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL %s: %w", list.Name, err))
		}
	}
	if lo, err := libcni.NetworkPluginConfFromBytes(loopbackConf); err == nil {
		c.cni.DelNetwork(ctx, lo, runtimeConf(namespace, name, uid, id, netns, "lo"))
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// installCNIPlugins builds ptp, host-local and loopback from the plugins
// module pinned in test/go.mod (into a cache under .lab/) and copies them into
// binDir unless they are there already.
func installCNIPlugins(ctx context.Context, testModDir, cacheDir, binDir string) error {
	var missing []string
	for name := range cniPlugins {
		if _, err := os.Stat(filepath.Join(binDir, name)); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return fmt.Errorf("create CNI plugin cache: %w", err)
	}
	for _, name := range missing {
		cached := filepath.Join(cacheDir, name)
		if _, err := os.Stat(cached); err != nil {
			tmp := fmt.Sprintf("%s.tmp%d", cached, os.Getpid())
			cmd := exec.CommandContext(ctx, goCommand(), "build", "-o", tmp, cniPlugins[name])
			cmd.Dir = testModDir
			// Offline: the kubelet runs in the node's network namespace,
			// which cannot reach the module proxy (a lookup would hang on
			// DNS); the modules come from the cache deps.sh filled.
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false", "GOPROXY=off")
			if os.Getenv("HOME") == "" && os.Getenv("GOCACHE") == "" {
				// A supervisor may start us with a bare environment; go needs a cache.
				cmd.Env = append(cmd.Env, "HOME=/root")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				os.Remove(tmp)
				return fmt.Errorf("build CNI plugin %s in %s: %v: %s (the modules must be in the cache: run test/scripts/deps.sh, or go mod download in test/)", name, testModDir, err, truncate(string(out), 500))
			}
			if err := os.Rename(tmp, cached); err != nil {
				return fmt.Errorf("cache CNI plugin %s: %w", name, err)
			}
		}
		if err := copyFile(cached, filepath.Join(binDir, name), 0o755); err != nil {
			return fmt.Errorf("install CNI plugin %s: %w", name, err)
		}
	}
	return nil
}

// goCommand finds the go tool: on PATH, else the standard install.
func goCommand() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// copyFile copies src to dst through a temporary file and a rename.
func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.tmp%d", dst, os.Getpid())
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// findTestModule finds the directory of the nested test module
// (github.com/meshlet/meshlet/test) walking up from each start directory.
func findTestModule(starts ...string) (string, error) {
	for _, s := range starts {
		for d := s; ; d = filepath.Dir(d) {
			b, err := os.ReadFile(filepath.Join(d, "test", "go.mod"))
			if err == nil && strings.Contains(string(b), "module github.com/meshlet/meshlet/test") {
				return filepath.Join(d, "test"), nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("find the meshlet test module (test/go.mod) above %v: the kubelet builds the CNI plugins from it; run it from the repository", starts)
}
