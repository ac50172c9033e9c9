package controlplane

import (
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	meshconfig "istio.io/api/mesh/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/pkg/model"
)

// The mesh config is where Istio keeps extension providers (external
// authorizers, tracers) and the default providers: the "mesh" key
// (MeshConfig in YAML) of the ConfigMap "istio" in its root namespace. A
// cluster moving from Istio keeps its own; meshlet's chart writes one from
// the meshConfig value.
const (
	meshConfigName = "istio"
	meshConfigKey  = "mesh"
)

// KindMeshConfig names the mesh config in rejections.
const KindMeshConfig = "MeshConfig"

// meshConfig returns the mesh config, parsed once per build; nil when there
// is none or it does not parse (reported once: what it configures is then
// not used, and CUSTOM policies naming its providers deny what they match).
func (bd *build) meshConfig() *meshconfig.MeshConfig {
	if bd.meshRead {
		return bd.mesh
	}
	bd.meshRead = true
	cm := bd.in.configMaps[bd.opts.RootNamespace+"/"+meshConfigName]
	if cm == nil || cm.Data[meshConfigKey] == "" {
		return nil
	}
	j, err := yaml.YAMLToJSON([]byte(cm.Data[meshConfigKey]))
	mc := &meshconfig.MeshConfig{}
	if err == nil {
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(j, mc)
	}
	if err != nil {
		bd.rejecter(KindMeshConfig, bd.opts.RootNamespace, meshConfigName).reject(
			"ConfigMap %s/%s key %s is not a valid MeshConfig: %v; its extension providers are not used", bd.opts.RootNamespace, meshConfigName, meshConfigKey, err)
		return nil
	}
	bd.mesh = mc
	return mc
}

// extensionProviders are the mesh config's extension providers of one kind
// (keep), by name; a name that is empty or given twice is reported, the
// first definition kept.
func (bd *build) extensionProviders(keep func(*meshconfig.MeshConfig_ExtensionProvider) bool) map[string]*meshconfig.MeshConfig_ExtensionProvider {
	mc := bd.meshConfig()
	if mc == nil {
		return nil
	}
	out := map[string]*meshconfig.MeshConfig_ExtensionProvider{}
	for _, p := range mc.GetExtensionProviders() {
		if !keep(p) {
			continue
		}
		if _, dup := out[p.GetName()]; dup || p.GetName() == "" {
			bd.rejecter(KindMeshConfig, bd.opts.RootNamespace, meshConfigName).warn("extensionProviders: %q is empty or defined twice; the first one is used", p.GetName())
			continue
		}
		out[p.GetName()] = p
	}
	return out
}

// addClusters lets add put clusters into cfg through an l7Builder that
// knows cfg's own (a provider's service that a route already sends to
// shares its cluster); the new ones join cfg's, sorted by name.
func (bd *build) addClusters(key model.NamespacedName, cfg *model.L7Config, add func(lb *l7Builder)) {
	lb := &l7Builder{bd: bd, ns: key.Namespace, clusters: map[string]*model.L7Cluster{}}
	for i := range cfg.Clusters {
		lb.clusters[cfg.Clusters[i].Name] = &cfg.Clusters[i]
	}
	have := len(lb.clusters)
	add(lb)
	if len(lb.clusters) == have {
		return
	}
	for _, name := range sortedKeys(lb.clusters) {
		if !slices.ContainsFunc(cfg.Clusters, func(c model.L7Cluster) bool { return c.Name == name }) {
			cfg.Clusters = append(cfg.Clusters, *lb.clusters[name])
		}
	}
	slices.SortFunc(cfg.Clusters, func(a, b model.L7Cluster) int { return strings.Compare(a.Name, b.Name) })
}
