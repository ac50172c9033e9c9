package cli

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/strvals"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	chartfiles "github.com/meshlet/meshlet/deploy/charts/meshlet"
	"github.com/meshlet/meshlet/deploy/crds"
)

// DefaultNamespace is where meshctl installs meshlet.
const DefaultNamespace = "meshlet-system"

// ReleaseName is the Helm release name meshctl uses.
const ReleaseName = "meshlet"

// RenderOptions selects what the chart renders.
type RenderOptions struct {
	// Profile is one of chartfiles.Profiles; "" means "default".
	Profile string
	// ValueFiles are YAML values files, later ones override earlier ones.
	ValueFiles []string
	// Set holds key=value overrides as helm --set takes them; they override ValueFiles.
	Set []string
	// Namespace is the install namespace; "" means DefaultNamespace.
	Namespace string
	// SkipCRDs leaves out the CustomResourceDefinitions.
	SkipCRDs bool
	// GatewayAPIChannel is the channel of the Gateway API CRDs rendered
	// with Istio's and meshlet's; "" means crds.Standard.
	GatewayAPIChannel crds.Channel
}

// Rendered is the chart's output: objects in apply order.
type Rendered struct {
	// Objects are in the order they must be applied (CRDs and namespace first).
	Objects []*unstructured.Unstructured
	// Values are the merged values the templates saw.
	Values map[string]any
}

// kindOrder ranks kinds for apply; unknown kinds go last, in name order.
var kindOrder = map[string]int{
	"CustomResourceDefinition": 0,
	"Namespace":                1,
	"ServiceAccount":           2,
	"Secret":                   3,
	"ConfigMap":                4,
	"ClusterRole":              5,
	"ClusterRoleBinding":       6,
	"Role":                     7,
	"RoleBinding":              8,
	"Service":                  9,
	"DaemonSet":                10,
	"Deployment":               11,
	"PodDisruptionBudget":      12,
}

// Render renders the embedded chart with opts and returns the objects in
// apply order. It reads value files from the local disk and nothing else.
func Render(opts RenderOptions) (*Rendered, error) {
	profile := opts.Profile
	if profile == "" {
		profile = "default"
	}
	ns := opts.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	channel, err := crds.ParseChannel(string(opts.GatewayAPIChannel))
	if err != nil {
		return nil, err
	}
	chartFS := chartfiles.FS()
	profileData, err := fs.ReadFile(chartFS, "profiles/"+profile+".yaml")
	if err != nil {
		return nil, fmt.Errorf("unknown profile %q: use one of %s", profile, strings.Join(chartfiles.Profiles, ", "))
	}
	ch, err := loadChart(chartFS)
	if err != nil {
		return nil, err
	}

	// Precedence, highest first: --set, -f files (last wins), profile, values.yaml.
	user := map[string]any{}
	for _, s := range opts.Set {
		if err := strvals.ParseInto(s, user); err != nil {
			return nil, fmt.Errorf("parse --set %q: %w (use key.path=value, e.g. --set trustDomain=example.org)", s, err)
		}
	}
	for i := len(opts.ValueFiles) - 1; i >= 0; i-- {
		data, err := os.ReadFile(opts.ValueFiles[i])
		if err != nil {
			return nil, fmt.Errorf("read values file: %w", err)
		}
		vals, err := chartutil.ReadValues(data)
		if err != nil {
			return nil, fmt.Errorf("parse values file %s: %w (it must be a YAML map)", opts.ValueFiles[i], err)
		}
		user = chartutil.CoalesceTables(user, vals.AsMap())
	}
	pvals, err := chartutil.ReadValues(profileData)
	if err != nil {
		return nil, fmt.Errorf("parse profile %s: %w", profile, err)
	}
	user = chartutil.CoalesceTables(user, pvals.AsMap())

	caps := chartutil.DefaultCapabilities.Copy()
	renderVals, err := chartutil.ToRenderValues(ch, user, chartutil.ReleaseOptions{
		Name: ReleaseName, Namespace: ns, IsInstall: true, Revision: 1,
	}, caps)
	if err != nil {
		return nil, fmt.Errorf("merge values: %w", err)
	}
	// Objects say who manages them: meshctl, not helm (helm list will not show them).
	if rel, ok := renderVals["Release"].(map[string]any); ok {
		rel["Service"] = FieldManager
	}
	out, err := engine.Render(ch, renderVals)
	if err != nil {
		return nil, fmt.Errorf("render chart: %w", err)
	}

	var objs []*unstructured.Unstructured
	if !opts.SkipCRDs {
		docs, err := crds.DocumentsFor(channel)
		if err != nil {
			return nil, fmt.Errorf("read embedded CRDs: %w", err)
		}
		names := make([]string, 0, len(docs))
		for n := range docs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			o, err := decodeObjects(docs[n], "crd "+n)
			if err != nil {
				return nil, err
			}
			objs = append(objs, o...)
		}
	}
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if path.Ext(n) != ".yaml" || strings.TrimSpace(out[n]) == "" {
			continue
		}
		o, err := decodeObjects([]byte(out[n]), n)
		if err != nil {
			return nil, err
		}
		objs = append(objs, o...)
	}
	sort.SliceStable(objs, func(i, j int) bool { return rank(objs[i]) < rank(objs[j]) })
	vals, _ := renderVals["Values"].(chartutil.Values)
	return &Rendered{Objects: objs, Values: vals.AsMap()}, nil
}

func rank(o *unstructured.Unstructured) int {
	if r, ok := kindOrder[o.GetKind()]; ok {
		return r
	}
	return len(kindOrder)
}

func loadChart(chartFS fs.FS) (*chart.Chart, error) {
	var files []*loader.BufferedFile
	err := fs.WalkDir(chartFS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(chartFS, p)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: p, Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded chart: %w", err)
	}
	ch, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("load embedded chart: %w", err)
	}
	return ch, nil
}

// decodeObjects splits a multi-document YAML stream into objects, skipping
// empty documents. what names the source in errors.
func decodeObjects(data []byte, what string) ([]*unstructured.Unstructured, error) {
	rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []*unstructured.Unstructured
	for {
		doc, err := rd.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", what, err)
		}
		j, err := sigsyaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", what, err)
		}
		if t := bytes.TrimSpace(j); len(t) == 0 || string(t) == "null" || string(t) == "{}" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("decode %s: %w (every document must be a Kubernetes object with apiVersion and kind)", what, err)
		}
		out = append(out, u)
	}
}

// Manifest renders objects as one multi-document YAML stream.
func Manifest(objs []*unstructured.Unstructured) ([]byte, error) {
	var b bytes.Buffer
	for _, o := range objs {
		y, err := yamlMarshal(o.Object)
		if err != nil {
			return nil, fmt.Errorf("marshal %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return b.Bytes(), nil
}

func yamlMarshal(v any) ([]byte, error) { return sigsyaml.Marshal(v) }
