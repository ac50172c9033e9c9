package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/meshlet/meshlet/pkg/configdump"
)

// `meshctl bug-report` gathers what a meshlet maintainer asks for first
// into one archive, as istioctl bug-report does: the mesh's status and
// analysis, every node agent's and waypoint's config dump, meshd's xDS
// clients, the logs of meshlet's pods, and the mesh configuration objects.
// Never a Secret: configuration kinds only, and the dumps carry no private
// key (pkg/configdump). Every part is bounded (log lines and bytes, dump
// size, the whole run's timeout); a part that cannot be read is listed in
// summary.txt and the rest is still written.

// bugReportLogBytes bounds each container log in the archive.
const bugReportLogBytes = 16 << 20

// bugReportKinds are the configuration objects gathered: liveKinds without
// Secrets, plus what meshlet and Istio add that analysis does not read.
func bugReportKinds() []schema.GroupVersionKind {
	var out []schema.GroupVersionKind
	for _, k := range liveKinds {
		if k.Kind != "Secret" {
			out = append(out, k)
		}
	}
	return append(out,
		schema.GroupVersionKind{Group: "telemetry.istio.io", Version: "v1", Kind: "Telemetry"},
		schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"},
		schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DaemonSet"},
	)
}

type bugReport struct {
	c       *clients
	g       *globalOptions
	tail    int64
	since   time.Duration
	started time.Time

	mu      sync.Mutex
	files   map[string][]byte
	missing []string
}

func (b *bugReport) add(name string, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files[name] = data
}

// fail records a part that could not be gathered.
func (b *bugReport) fail(part string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.missing = append(b.missing, part+": "+err.Error())
}

func newBugReportCommand(s Streams, g *globalOptions) *cobra.Command {
	var (
		output  string
		tail    int64
		since   time.Duration
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "bug-report",
		Short: "Gather the mesh's state, config dumps and logs into one archive to attach to a bug report",
		Long: `Writes a .tar.gz with what is needed to understand a problem with the mesh:
meshctl status, proxy-status and analyze; the config dump of every node agent
and waypoint (workloads, services, policies, routes, certificates' public
facts: no private key); meshd's xDS clients; the logs of meshd, the node
agents, waypoints and gateways (and of their previous run after a restart);
nodes, meshlet's Deployments and DaemonSets, and the Istio and Gateway API
configuration of every namespace. Secrets are never read. A part that cannot
be read is listed in summary.txt and the rest is written. Look through it
before you share it: it names your workloads, addresses and policies.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tail <= 0 {
				return fmt.Errorf("--tail %d: want a positive number of lines", tail)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(ctxOf(cmd), timeout)
			defer cancel()
			b := &bugReport{c: c, g: g, tail: tail, since: since, started: time.Now().UTC(), files: map[string][]byte{}}
			if output == "" {
				output = "meshlet-bug-report-" + b.started.Format("20060102T150405Z") + ".tar.gz"
			}
			fmt.Fprintf(s.ErrOut, "gathering the mesh's state (up to %s)...\n", timeout)
			b.gather(ctx)
			if err := b.write(output); err != nil {
				return err
			}
			fmt.Fprintf(s.Out, "wrote %s: %d files", output, len(b.files)+1)
			if len(b.missing) > 0 {
				fmt.Fprintf(s.Out, ", %d parts not gathered (see summary.txt)", len(b.missing))
			}
			fmt.Fprintln(s.Out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "", "archive to write (default meshlet-bug-report-<UTC time>.tar.gz in the current directory)")
	f.Int64Var(&tail, "tail", 5000, "last lines of each container log")
	f.DurationVar(&since, "since", 0, "only log lines newer than this (0: no limit but --tail)")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "how long gathering may take in all")
	return cmd
}

// gather reads every part; failures are recorded, never fatal.
func (b *bugReport) gather(ctx context.Context) {
	ns := b.g.meshNamespace
	if st, err := readMeshState(ctx, b.c, ns, time.Now()); err != nil {
		b.fail("status", err)
	} else {
		var status, proxies bytes.Buffer
		printStatus(&status, st, ns)
		b.add("status.txt", status.Bytes())
		if err := printProxyStatus(&proxies, st, "json"); err != nil {
			b.fail("proxy-status", err)
		} else {
			b.add("proxy-status.json", proxies.Bytes())
		}
	}
	if findings, err := analyzeLive(ctx, b.g, &analyzeOptions{allNamespaces: true}); err != nil {
		b.fail("analyze", err)
	} else {
		var out bytes.Buffer
		for _, f := range findings {
			fmt.Fprintln(&out, f.String())
		}
		if len(findings) == 0 {
			fmt.Fprintln(&out, "no findings")
		}
		b.add("analyze.txt", out.Bytes())
	}
	b.gatherObjects(ctx)

	pods, err := b.meshletPods(ctx)
	if err != nil {
		b.fail("meshlet pods", err)
		return
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, p := range pods {
		g.Go(func() error {
			b.gatherPod(gctx, p)
			return nil
		})
	}
	_ = g.Wait()
}

// meshletPods are meshd's, the node agents', and every waypoint's and
// gateway's pods.
func (b *bugReport) meshletPods(ctx context.Context) ([]corev1.Pod, error) {
	var out []corev1.Pod
	for _, q := range []struct{ ns, selector string }{
		{b.g.meshNamespace, meshdSelector},
		{b.g.meshNamespace, nodeAgentSelector},
		{"", gatewayNameLabel},
	} {
		l, err := b.c.kube.CoreV1().Pods(q.ns).List(ctx, metav1.ListOptions{LabelSelector: q.selector})
		if err != nil {
			return nil, fmt.Errorf("list pods %s: %w", q.selector, err)
		}
		out = append(out, l.Items...)
	}
	return out, nil
}

// podDir is where a pod's files go: meshd/<pod>, node-agents/<node>/<pod>, or
// gateways/<namespace>/<pod>.
func (b *bugReport) podDir(p corev1.Pod) (dir string, admin string) {
	switch {
	case p.Labels["app.kubernetes.io/name"] == "meshd":
		return "meshd/" + p.Name, "/debug/xds"
	case p.Labels["app.kubernetes.io/name"] == "meshlet-node-agent":
		return "node-agents/" + p.Spec.NodeName + "/" + p.Name, configdump.Path
	}
	return "gateways/" + p.Namespace + "/" + p.Name, configdump.Path
}

// gatherPod reads a pod's logs (this run's and, after a restart, the
// previous one's) and its admin dump.
func (b *bugReport) gatherPod(ctx context.Context, p corev1.Pod) {
	dir, adminPath := b.podDir(p)
	where := "pod " + p.Namespace + "/" + p.Name
	for _, c := range p.Spec.Containers {
		restarted := slices.ContainsFunc(p.Status.ContainerStatuses, func(s corev1.ContainerStatus) bool { return s.Name == c.Name && s.RestartCount > 0 })
		for _, previous := range []bool{false, true} {
			if previous && !restarted {
				continue
			}
			opts := &corev1.PodLogOptions{Container: c.Name, Previous: previous, TailLines: &b.tail, LimitBytes: ptr(int64(bugReportLogBytes))}
			if b.since > 0 {
				opts.SinceSeconds = ptr(int64(b.since.Seconds()))
			}
			raw, err := b.c.kube.CoreV1().Pods(p.Namespace).GetLogs(p.Name, opts).DoRaw(ctx)
			name := dir + "/" + c.Name + ".log"
			if previous {
				name = dir + "/" + c.Name + ".previous.log"
			}
			if err != nil {
				b.fail(fmt.Sprintf("%s container %s logs (previous %v)", where, c.Name, previous), err)
				continue
			}
			b.add(name, raw)
		}
	}
	if p.Status.Phase != corev1.PodRunning {
		return
	}
	raw, err := b.c.adminGet(ctx, p.Namespace, p.Name, configdump.AdminPort, adminPath)
	if err != nil {
		b.fail(where+" "+adminPath, err)
		return
	}
	b.add(dir+"/"+strings.TrimPrefix(strings.ReplaceAll(adminPath, "/", "_"), "_")+".json", raw)
}

func ptr[T any](v T) *T { return &v }

// gatherObjects lists the configuration kinds cluster-wide, one file per
// kind, managedFields dropped.
func (b *bugReport) gatherObjects(ctx context.Context) {
	for _, gvk := range bugReportKinds() {
		m, err := b.c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			continue // not installed: none of these
		}
		if err != nil {
			b.fail("objects "+gvk.Kind, err)
			continue
		}
		l, err := b.c.dynamic.Resource(m.Resource).List(ctx, metav1.ListOptions{})
		if err != nil {
			b.fail("objects "+m.Resource.Resource, err)
			continue
		}
		for i := range l.Items {
			l.Items[i].SetManagedFields(nil)
			redactEnv(l.Items[i].Object)
		}
		raw, err := json.MarshalIndent(l, "", "  ")
		if err != nil {
			b.fail("objects "+m.Resource.Resource, err)
			continue
		}
		group := gvk.Group
		if group == "" {
			group = "core"
		}
		b.add("objects/"+group+"/"+m.Resource.Resource+".json", raw)
	}
}

// redactEnv replaces the literal values of a pod spec's environment
// variables (of a Pod, or a workload's pod template) with Redacted: they
// may hold credentials. Names and references (valueFrom) stay.
func redactEnv(obj map[string]any) {
	spec, _ := obj["spec"].(map[string]any)
	if tmpl, ok := spec["template"].(map[string]any); ok {
		spec, _ = tmpl["spec"].(map[string]any)
	}
	for _, key := range []string{"initContainers", "containers", "ephemeralContainers"} {
		cs, _ := spec[key].([]any)
		for _, c := range cs {
			cm, _ := c.(map[string]any)
			env, _ := cm["env"].([]any)
			for _, e := range env {
				if em, ok := e.(map[string]any); ok {
					if _, has := em["value"]; has {
						em["value"] = configdump.Redacted
					}
				}
			}
		}
	}
}

// write puts the files and summary.txt into a gzipped tar at path, through
// a temporary file renamed at the end: no half-written archive is left.
func (b *bugReport) write(path string) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".*")
	if err != nil {
		return fmt.Errorf("write the report: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	top := strings.TrimSuffix(strings.TrimSuffix(base, ".gz"), ".tar")
	zw := gzip.NewWriter(tmp)
	tw := tar.NewWriter(zw)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: top + "/" + name, Mode: 0o600, Size: int64(len(data)), ModTime: b.started, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := put("summary.txt", b.summary()); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	names := make([]string, 0, len(b.files))
	for n := range b.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := put(n, b.files[n]); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := errors.Join(tw.Close(), zw.Close(), tmp.Chmod(0o600), tmp.Close()); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func (b *bugReport) summary() []byte {
	var out bytes.Buffer
	fmt.Fprintf(&out, "meshlet bug report, gathered %s by meshctl %s\n", b.started.Format(time.RFC3339), clientVersion())
	fmt.Fprintf(&out, "mesh namespace: %s\n", b.g.meshNamespace)
	if v, err := b.c.kube.Discovery().ServerVersion(); err == nil {
		fmt.Fprintf(&out, "Kubernetes: %s\n", v.GitVersion)
	}
	fmt.Fprintf(&out, "logs: last %d lines of each container", b.tail)
	if b.since > 0 {
		fmt.Fprintf(&out, ", newer than %s", b.since)
	}
	fmt.Fprintln(&out)
	out.WriteString(`
status.txt, proxy-status.json, analyze.txt   meshctl status, proxy-status -o json, analyze -A
meshd/<pod>/                                 logs, debug_xds.json (its xDS clients)
node-agents/<node>/<pod>/                    logs, config_dump.json (meshctl agent-config -o json)
gateways/<namespace>/<pod>/                  logs, config_dump.json (meshctl proxy-config -o json)
objects/<group>/<resource>.json              configuration objects of every namespace (no Secrets)
`)
	if len(b.missing) > 0 {
		sort.Strings(b.missing)
		fmt.Fprintf(&out, "\nnot gathered (%d):\n", len(b.missing))
		for _, m := range b.missing {
			fmt.Fprintf(&out, "- %s\n", m)
		}
	}
	return out.Bytes()
}
