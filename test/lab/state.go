package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
)

// State records everything a running lab created, written as it is created
// so Down can undo it after a crash.
type State struct {
	Nodes      []string        `json:"nodes"`      // node names
	Processes  map[string]Proc `json:"processes"`  // process name -> the child the supervisor started
	Netns      []string        `json:"netns"`      // named netns (ip netns)
	Links      []string        `json:"links"`      // root-netns links
	Cgroups    []string        `json:"cgroups"`    // absolute cgroup v2 dirs
	Mounts     []string        `json:"mounts"`     // mount points (bpffs instances)
	Supervisor int             `json:"supervisor"` // pid of the supervisor

	mu   sync.Mutex
	path string
}

// Proc is one recorded lab process.
type Proc struct {
	Pid int    `json:"pid"` // process id
	Exe string `json:"exe"` // absolute path of the program it runs; checked before signalling so a reused pid is never hit
}

// loadState reads the state file; a missing file is an empty state.
func loadState(l Layout) (*State, error) {
	s := &State{Processes: map[string]Proc{}, path: l.StateFile()}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("parse lab state %s: %w", s.path, err)
	}
	if s.Processes == nil {
		s.Processes = map[string]Proc{}
	}
	return s, nil
}

// update applies f and writes the state file.
func (s *State) update(f func(s *State)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

func addUnique(list []string, v string) []string {
	for _, x := range list {
		if x == v {
			return list
		}
	}
	return append(list, v)
}
