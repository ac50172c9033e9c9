package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// pluginBin is the real meshlet-cni binary, built once for the package.
var pluginBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshlet-cni-test")
	if err != nil {
		panic(err)
	}
	pluginBin = filepath.Join(dir, PluginType)
	out, err := exec.Command("go", "build", "-o", pluginBin, "github.com/meshlet/meshlet/cmd/meshlet-cni").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		panic("build meshlet-cni: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/mlna-pod"}],"ips":[{"interface":0,"address":"198.19.3.7/24","gateway":"198.19.3.1"}]}`

func netconf(t *testing.T, sock, state string, withPrev bool) []byte {
	t.Helper()
	c := map[string]any{
		"cniVersion": "1.0.0", "name": "kindnet", "type": PluginType,
		"socketPath": sock, "statePath": state, "timeoutSeconds": 5,
	}
	if withPrev {
		c["prevResult"] = json.RawMessage(prevResult)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type pluginRun struct {
	stdout, stderr string
	err            error
}

func runPlugin(t *testing.T, cmd string, conf []byte) pluginRun {
	t.Helper()
	c := exec.Command(pluginBin)
	c.Env = []string{
		"CNI_COMMAND=" + cmd,
		"CNI_CONTAINERID=sandbox-1",
		"CNI_NETNS=/var/run/netns/mlna-pod",
		"CNI_IFNAME=eth0",
		"CNI_PATH=/opt/cni/bin",
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=uid-1;K8S_POD_INFRA_CONTAINER_ID=sandbox-1",
	}
	c.Stdin = bytes.NewReader(conf)
	var o, e bytes.Buffer
	c.Stdout, c.Stderr = &o, &e
	err := c.Run()
	return pluginRun{stdout: o.String(), stderr: e.String(), err: err}
}

// agent is a real Server on a unix socket that records what it was told.
type agent struct {
	mu     sync.Mutex
	events map[string][]PodEvent
}

func startAgent(t *testing.T, sock string, verdict Verdict) *agent {
	t.Helper()
	a := &agent{events: map[string][]PodEvent{}}
	rec := func(kind string) func(context.Context, PodEvent) Verdict {
		return func(_ context.Context, ev PodEvent) Verdict {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.events[kind] = append(a.events[kind], ev)
			return verdict
		}
	}
	s, err := Listen(ServerOptions{
		SocketPath: sock,
		Add:        rec("add"),
		Check:      rec("check"),
		Del:        func(ctx context.Context, ev PodEvent) { rec("del")(ctx, ev) },
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Close() })
	return a
}

func (a *agent) got(kind string) []PodEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.events[kind]
}

func TestPluginAdd(t *testing.T) {
	wantEvent := PodEvent{Namespace: "shop", Name: "cart-0", UID: "uid-1", ContainerID: "sandbox-1",
		Netns: "/var/run/netns/mlna-pod", IfName: "eth0", IPs: []string{"198.19.3.7"}}
	tests := []struct {
		name     string
		agentUp  bool
		verdict  Verdict
		snapshot *Snapshot // written to statePath when non-nil
		withPrev bool
		wantErr  string // substring of the CNI error; empty means success
	}{
		{name: "enrolled", agentUp: true, verdict: Verdict{Enrolled: true, MustEnroll: true}, withPrev: true},
		{name: "outside mesh", agentUp: true, verdict: Verdict{}, withPrev: true},
		{name: "enroll failed", agentUp: true, verdict: Verdict{MustEnroll: true, Error: "open listeners: netns gone"}, withPrev: true,
			wantErr: "could not enroll it: open listeners: netns gone"},
		{name: "agent down, namespace in mesh", snapshot: &Snapshot{AmbientNamespaces: []string{"default", "shop"}}, withPrev: true,
			wantErr: "node agent is unreachable"},
		{name: "agent down, namespace outside mesh", snapshot: &Snapshot{AmbientNamespaces: []string{"default"}}, withPrev: true},
		{name: "agent down, no snapshot", withPrev: true},
		{name: "not chained", agentUp: true, wantErr: "must be chained after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sock, state := filepath.Join(dir, "cni.sock"), filepath.Join(dir, "enrollment.json")
			var a *agent
			if tt.agentUp {
				a = startAgent(t, sock, tt.verdict)
			}
			if tt.snapshot != nil {
				if err := WriteSnapshot(state, *tt.snapshot); err != nil {
					t.Fatal(err)
				}
			}
			r := runPlugin(t, "ADD", netconf(t, sock, state, tt.withPrev))
			if tt.wantErr != "" {
				if r.err == nil || !strings.Contains(r.stdout, tt.wantErr) {
					t.Fatalf("ADD = %v, stdout %q; want failure containing %q", r.err, r.stdout, tt.wantErr)
				}
				return
			}
			if r.err != nil {
				t.Fatalf("ADD failed: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
			}
			// The previous result passes through unchanged.
			var got, want map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
				t.Fatalf("ADD stdout %q is not JSON: %v", r.stdout, err)
			}
			if err := json.Unmarshal([]byte(prevResult), &want); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("ADD result differs from prevResult (-want +got):\n%s", d)
			}
			if a != nil {
				if d := cmp.Diff([]PodEvent{wantEvent}, a.got("add")); d != "" {
					t.Errorf("agent got (-want +got):\n%s", d)
				}
			}
		})
	}
}

func TestPluginDelCheckStatusVersion(t *testing.T) {
	dir := t.TempDir()
	sock, state := filepath.Join(dir, "cni.sock"), filepath.Join(dir, "enrollment.json")
	if err := WriteSnapshot(state, Snapshot{AmbientNamespaces: []string{"shop"}}); err != nil {
		t.Fatal(err)
	}
	// Agent away: DEL still succeeds, CHECK fails closed, STATUS succeeds.
	if r := runPlugin(t, "DEL", netconf(t, sock, state, false)); r.err != nil {
		t.Errorf("DEL with the agent away = %v (%s); want success", r.err, r.stdout)
	}
	if r := runPlugin(t, "CHECK", netconf(t, sock, state, true)); r.err == nil {
		t.Errorf("CHECK with the agent away for an ambient namespace succeeded; want failure")
	}
	status := bytes.Replace(netconf(t, sock, state, false), []byte(`"1.0.0"`), []byte(`"1.1.0"`), 1)
	if r := runPlugin(t, "STATUS", status); r.err != nil {
		t.Errorf("STATUS = %v (%s); want success", r.err, r.stdout)
	}

	a := startAgent(t, sock, Verdict{Enrolled: true, MustEnroll: true})
	if r := runPlugin(t, "DEL", netconf(t, sock, state, false)); r.err != nil {
		t.Errorf("DEL = %v (%s)", r.err, r.stdout)
	}
	if r := runPlugin(t, "CHECK", netconf(t, sock, state, true)); r.err != nil {
		t.Errorf("CHECK = %v (%s)", r.err, r.stdout)
	}
	if n := len(a.got("del")); n != 1 {
		t.Errorf("agent got %d DEL events; want 1", n)
	}
	if n := len(a.got("check")); n != 1 {
		t.Errorf("agent got %d CHECK events; want 1", n)
	}

	r := runPlugin(t, "VERSION", []byte(`{"cniVersion":"1.0.0"}`))
	if r.err != nil || !strings.Contains(r.stdout, `"1.1.0"`) {
		t.Errorf("VERSION = %v, %q; want supported versions including 1.1.0", r.err, r.stdout)
	}
}

func TestServerSocketMode(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cni.sock")
	if err := os.WriteFile(sock, nil, 0o644); err != nil { // stale file from a previous agent
		t.Fatal(err)
	}
	startAgent(t, sock, Verdict{})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s mode = %v; want a socket with 0600", sock, fi.Mode())
	}
}

// TestPluginUnderNodeRoot: the plugin installed in <root>/opt/cni/bin finds
// the agent's socket at <root>/var/run/meshlet when the conflist names
// /var/run/meshlet/... (a lab node's root, not the machine's /).
func TestPluginUnderNodeRoot(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "opt/cni/bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pluginBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, PluginType), b, 0o755); err != nil {
		t.Fatal(err)
	}
	// A path that does not exist on this machine, under the node root.
	rel := "/var/run/meshlet-test-" + filepath.Base(root)
	if err := os.MkdirAll(filepath.Join(root, rel), 0o755); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, filepath.Join(root, rel, "cni.sock"), Verdict{Enrolled: true, MustEnroll: true})
	saved := pluginBin
	pluginBin = filepath.Join(bin, PluginType)
	defer func() { pluginBin = saved }()
	r := runPlugin(t, "ADD", netconf(t, rel+"/cni.sock", rel+"/enrollment.json", true))
	if r.err != nil {
		t.Fatalf("ADD = %v (%s %s)", r.err, r.stdout, r.stderr)
	}
	if n := len(a.got("add")); n != 1 {
		t.Errorf("agent under the node root got %d ADD events; want 1", n)
	}
}

// TestServerHandoff: in a rolling update the new agent binds the socket
// while the old one still runs; when the old one stops, the plugin still
// reaches the new one (the old agent must not remove its successor's socket).
func TestServerHandoff(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cni.sock")
	open := func() *Server {
		s, err := Listen(ServerOptions{SocketPath: sock, Add: func(context.Context, PodEvent) Verdict { return Verdict{} }})
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve()
		return s
	}
	old := open()
	next := open()
	t.Cleanup(func() { next.Close() })
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("after the old agent stopped, the new agent's socket is gone: %v", err)
	}
	c.Close()
	if err := next.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the last agent left its socket behind: %v", err)
	}
}
