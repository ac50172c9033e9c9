package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// Config is meshlet-cni's entry in the conflist.
type Config struct {
	types.PluginConf
	// SocketPath is the agent's unix socket. Empty means DefaultSocketPath.
	SocketPath string `json:"socketPath,omitempty"`
	// StatePath is the agent's enrollment snapshot. Empty means
	// DefaultStatePath.
	StatePath string `json:"statePath,omitempty"`
	// TimeoutSeconds bounds one exchange with the agent. Zero means 30.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// k8sArgs are the CNI_ARGS a Kubernetes runtime sets.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}

// Funcs returns the plugin's commands for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: Add, Del: Del, Check: Check, Status: Status}
}

// VersionInfo lists the CNI spec versions the plugin speaks.
var VersionInfo = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Add tells the agent about a new pod and prints the previous result.
func Add(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errors.New("meshlet-cni: no prevResult: it must be chained after the cluster's network plugin in a .conflist, not used alone")
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("meshlet-cni: convert prevResult: %w", err)
	}
	ev, err := podEvent(args, res)
	if err != nil {
		return err
	}
	if err := decide(conf, pathAdd, ev); err != nil {
		return err
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

// Check asks the agent whether a pod that belongs in the mesh is enrolled.
func Check(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errors.New("meshlet-cni: CHECK without prevResult")
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("meshlet-cni: convert prevResult: %w", err)
	}
	ev, err := podEvent(args, res)
	if err != nil {
		return err
	}
	return decide(conf, pathCheck, ev)
}

// Del tells the agent a pod is going away. It fails only on a malformed
// configuration, never because the agent is away.
func Del(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ev, err := podEvent(args, nil)
	if err != nil {
		return err
	}
	if _, err := call(conf, pathDel, ev); err != nil {
		fmt.Fprintf(os.Stderr, "meshlet-cni: DEL of %s/%s not delivered (the agent reconciles on start): %v\n", ev.Namespace, ev.Name, err)
	}
	return nil
}

// Status succeeds while the plugin can serve ADD, which it always can for
// pods outside the mesh; see the package doc.
func Status(args *skel.CmdArgs) error {
	_, err := parseConfig(args.StdinData)
	return err
}

// decide sends ev to the agent and turns its verdict, or its absence, into
// the plugin's result.
func decide(conf *Config, path string, ev PodEvent) error {
	v, err := call(conf, path, ev)
	if err != nil {
		snap, serr := ReadSnapshot(conf.StatePath)
		switch {
		case errors.Is(serr, fs.ErrNotExist):
			fmt.Fprintf(os.Stderr, "meshlet-cni: node agent unreachable (%v) and no enrollment snapshot at %s: pod %s/%s starts outside the mesh\n", err, conf.StatePath, ev.Namespace, ev.Name)
			return nil
		case serr != nil:
			return fmt.Errorf("meshlet-cni: node agent unreachable (%v) and its enrollment snapshot unreadable: %w; pod %s/%s is refused (fail closed)", err, serr, ev.Namespace, ev.Name)
		case snap.InMesh(ev.Namespace):
			return fmt.Errorf("meshlet-cni: pod %s/%s belongs in the mesh (namespace %s is istio.io/dataplane-mode=ambient) but the meshlet node agent is unreachable at %s: %v; check the node-agent DaemonSet pod on this node", ev.Namespace, ev.Name, ev.Namespace, conf.SocketPath, err)
		}
		return nil
	}
	if v.Error != "" && v.MustEnroll {
		return fmt.Errorf("meshlet-cni: pod %s/%s belongs in the mesh but the node agent could not enroll it: %s", ev.Namespace, ev.Name, v.Error)
	}
	return nil
}

// call posts ev to the agent and decodes its verdict.
func call(conf *Config, path string, ev PodEvent) (Verdict, error) {
	var v Verdict
	timeout := time.Duration(conf.TimeoutSeconds) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	body, err := json.Marshal(ev)
	if err != nil {
		return v, fmt.Errorf("encode pod event: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://meshlet-agent"+path, bytes.NewReader(body))
	if err != nil {
		return v, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", conf.SocketPath)
		},
	}}
	resp, err := c.Do(req)
	if err != nil {
		return v, fmt.Errorf("post %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return v, fmt.Errorf("read verdict: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("agent answered %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("decode verdict: %w", err)
	}
	return v, nil
}

func parseConfig(stdin []byte) (*Config, error) {
	conf := &Config{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("meshlet-cni: parse network configuration: %w", err)
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, fmt.Errorf("meshlet-cni: parse prevResult: %w", err)
	}
	if conf.SocketPath == "" {
		conf.SocketPath = DefaultSocketPath
	}
	if conf.StatePath == "" {
		conf.StatePath = DefaultStatePath
	}
	conf.SocketPath = underNodeRoot(conf.SocketPath)
	conf.StatePath = underNodeRoot(conf.StatePath)
	if conf.TimeoutSeconds < 0 {
		return nil, fmt.Errorf("meshlet-cni: timeoutSeconds %d is negative: set a positive number or leave it out", conf.TimeoutSeconds)
	}
	if conf.TimeoutSeconds == 0 {
		conf.TimeoutSeconds = 30
	}
	return conf, nil
}

// podEvent collects the pod's facts from the CNI args and, on ADD, its
// previous result.
func podEvent(args *skel.CmdArgs, res *current.Result) (PodEvent, error) {
	var ka k8sArgs
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return PodEvent{}, fmt.Errorf("meshlet-cni: parse CNI_ARGS: %w", err)
	}
	ev := PodEvent{
		Namespace:   string(ka.K8S_POD_NAMESPACE),
		Name:        string(ka.K8S_POD_NAME),
		UID:         string(ka.K8S_POD_UID),
		ContainerID: args.ContainerID,
		Netns:       args.Netns,
		IfName:      args.IfName,
	}
	if res != nil {
		for _, ip := range res.IPs {
			ev.IPs = append(ev.IPs, ip.Address.IP.String())
		}
	}
	return ev, nil
}

// underNodeRoot finds an absolute path of the node's when this binary runs
// from a node root other than "/": the plugin lives in <root>/opt/cni/bin,
// so a path missing at / is looked for under <root> (the lab keeps each
// node's host paths under its own root). Anywhere else p is returned as is.
func underNodeRoot(p string) string {
	if _, err := os.Stat(p); err == nil || !filepath.IsAbs(p) {
		return p
	}
	exe, err := os.Executable()
	if err != nil {
		return p
	}
	root, ok := strings.CutSuffix(filepath.Dir(exe), "/opt/cni/bin")
	if !ok || root == "" {
		return p
	}
	alt := filepath.Join(root, p)
	if _, err := os.Stat(filepath.Dir(alt)); err == nil {
		return alt
	}
	return p
}
