package kubelet

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// podRecord is the per-pod JSON file at NodeRoot/pods/<ns>_<name>_<uid>.json
// that the lab's test helpers read to exec into a pod and read its logs.
type podRecord struct {
	Namespace  string                     `json:"namespace"`
	Name       string                     `json:"name"`
	UID        string                     `json:"uid"`
	Node       string                     `json:"node"`
	Netns      string                     `json:"netns"` // empty for hostNetwork pods
	Cgroup     string                     `json:"cgroup"`
	IP         string                     `json:"ip"`
	SandboxID  string                     `json:"sandboxID,omitempty"` // CNI container ID, for CNI DEL after a crash
	Containers map[string]containerRecord `json:"containers"`
}

// containerRecord is one container in a podRecord.
type containerRecord struct {
	PID      int    `json:"pid"`
	Log      string `json:"log"`
	Restarts int32  `json:"restarts"`
}

func recordPath(nodeRoot, namespace, name, uid string) string {
	return filepath.Join(nodeRoot, "pods", fmt.Sprintf("%s_%s_%s.json", namespace, name, uid))
}

// writeRecord writes r atomically.
func writeRecord(path string, r *podRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode pod record: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create pod record dir: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write pod record: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write pod record: %w", err)
	}
	return nil
}

// readRecords reads every pod record of a node (left by a crashed kubelet).
func readRecords(nodeRoot string) map[string]*podRecord {
	out := map[string]*podRecord{}
	files, _ := filepath.Glob(filepath.Join(nodeRoot, "pods", "*.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var r podRecord
		if json.Unmarshal(b, &r) == nil {
			out[f] = &r
		}
	}
	return out
}
