package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Succession tells an agent whether it is the newest agent process on the
// node. During a rolling update (maxSurge) two agents serve the node's
// readiness port together (SO_REUSEPORT), so the kubelet's probe of the new
// agent pod may reach the old agent: if the old one answered "ready", the
// new pod would count as ready before it had opened its listeners in every
// enrolled pod, the old one would be stopped, and pods would have no
// listener for a moment (connections refused). Each agent writes its PID to
// a file both share (the node's /var/run/meshlet) when it starts; an agent
// whose PID is no longer there answers readiness 503.
type Succession struct {
	path string
	pid  int
}

// ClaimSuccession records this process as the newest agent in path.
func ClaimSuccession(path string) (*Succession, error) {
	s := &Succession{path: path, pid: os.Getpid()}
	return s, s.claim()
}

func (s *Succession) claim() error {
	tmp := fmt.Sprintf("%s.%d.tmp", s.path, s.pid)
	if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
		return fmt.Errorf("record the newest agent in %s: %w", s.path, err)
	}
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(s.pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("record the newest agent in %s: %w", s.path, err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record the newest agent in %s: %w", s.path, err)
	}
	return nil
}

// Newest reports whether no later agent that still runs has claimed the
// node (the DaemonSet shares the host's PID namespace, so a claimant that
// exited, say a new agent that failed at start, gives the node back). An
// unreadable file counts as newest: readiness must not fail for want of it.
func (s *Succession) Newest() bool {
	b, err := os.ReadFile(s.path)
	if err != nil {
		return true
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid == s.pid || pid <= 0 {
		return true
	}
	return !alive(pid)
}

// alive reports whether process pid exists (signal 0; EPERM means it does).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
