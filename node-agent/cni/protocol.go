// Package cni is meshlet-cni, the chained CNI plugin, and the node agent's end
// of the unix socket it talks to.
//
// On ADD the plugin hands the pod's identity (K8S_POD_* args), its netns path,
// interface and IPs to the node agent and waits for a verdict; it passes the
// previous plugin's result through unchanged. It never configures networking
// itself and must not: the cluster's own CNI owns the pod's interface, and the
// node agent (not this short-lived binary) owns enrollment.
//
// Fail closed, and how the plugin knows. When the agent answers, its verdict
// decides: a pod the agent must enroll but could not makes ADD fail with the
// agent's reason. When the agent cannot be reached the plugin cannot ask the
// API server itself (it holds no credentials), so it reads the enrollment
// snapshot the agent keeps at StatePath: the namespaces labelled
// istio.io/dataplane-mode=ambient, rewritten atomically whenever they change.
// A pod in one of those namespaces makes ADD fail ("agent unreachable"); any
// other pod starts, and the agent's live reconciler enrolls pods that opted
// in with a pod label once it is back. A missing snapshot means the agent has
// never synced on this node, and the pod starts (blocking every pod on the
// node, kube-system included, would be worse); the plugin says so on stderr.
//
// Paths in the plugin's configuration are the node's. When one is missing
// at / and the plugin runs from <root>/opt/cni/bin, it is looked for under
// <root>: the lab keeps every node's host paths under a node root, and the
// agent's manifests stay the same as in a real cluster.
//
// DEL never fails on an unreachable agent (the spec wants DEL to succeed when
// resources are gone; the agent reconciles on restart). STATUS succeeds while
// the agent is down because ADD can still serve every pod outside the mesh.
package cni

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// PluginType is the "type" of meshlet-cni in a conflist, and the name of its
// binary in the CNI bin dir.
const PluginType = "meshlet-cni"

// Defaults for the plugin's configuration and the agent's socket.
const (
	DefaultSocketPath = "/var/run/meshlet/cni.sock"
	DefaultStatePath  = "/var/run/meshlet/enrollment.json"
)

// Paths the agent serves on its socket.
const (
	pathAdd   = "/v1/pod/add"
	pathDel   = "/v1/pod/del"
	pathCheck = "/v1/pod/check"
)

// PodEvent is what the plugin tells the agent about one pod.
type PodEvent struct {
	// Namespace, Name and UID are the pod's, from K8S_POD_NAMESPACE,
	// K8S_POD_NAME and K8S_POD_UID. Empty when the runtime sent none.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	// ContainerID is CNI_CONTAINERID (the sandbox).
	ContainerID string `json:"containerID"`
	// Netns is the path of the pod's network namespace (CNI_NETNS).
	Netns string `json:"netns"`
	// IfName is the pod's interface inside Netns (CNI_IFNAME).
	IfName string `json:"ifName"`
	// IPs are the pod's addresses from the previous plugin's result,
	// without prefix length.
	IPs []string `json:"ips"`
}

// Verdict is the agent's answer to a PodEvent.
type Verdict struct {
	// Enrolled says the pod is in the mesh and its enrollment succeeded.
	Enrolled bool `json:"enrolled"`
	// MustEnroll says the pod belongs in the mesh. With a non-empty Error
	// it makes ADD (and CHECK) fail.
	MustEnroll bool `json:"mustEnroll"`
	// Error is why enrolling failed; empty on success.
	Error string `json:"error,omitempty"`
}

// Snapshot is the enrollment state the agent leaves for the plugin to read
// when the agent cannot answer.
type Snapshot struct {
	// AmbientNamespaces are the namespaces labelled
	// istio.io/dataplane-mode=ambient, sorted.
	AmbientNamespaces []string `json:"ambientNamespaces"`
}

// InMesh reports whether a pod of namespace ns belongs in the mesh by its
// namespace's label.
func (s Snapshot) InMesh(ns string) bool {
	return slices.Contains(s.AmbientNamespaces, ns)
}

// WriteSnapshot replaces the snapshot at path atomically (write to a
// temporary file in the same directory, then rename).
func WriteSnapshot(path string, s Snapshot) error {
	s.AmbientNamespaces = slices.Clone(s.AmbientNamespaces)
	slices.Sort(s.AmbientNamespaces)
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode enrollment snapshot: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create snapshot dir: %w", err)
	}
	return WriteFileAtomic(path, b, 0o644)
}

// ReadSnapshot reads the snapshot at path. A missing file returns an error
// satisfying errors.Is(err, fs.ErrNotExist).
func ReadSnapshot(path string) (Snapshot, error) {
	var s Snapshot
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("read enrollment snapshot: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("decode enrollment snapshot %s: %w", path, err)
	}
	return s, nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory and a rename, so readers see the old or the new content, never
// a part.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return WriteAtomic(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteAtomic is WriteFileAtomic for contents that write streams into the
// temporary file (a large binary need not be held in memory).
func WriteAtomic(path string, mode os.FileMode, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename into %s: %w", path, err)
	}
	return nil
}
