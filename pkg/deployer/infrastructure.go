package deployer

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	autoscalingv2ac "k8s.io/client-go/applyconfigurations/autoscaling/v2"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// A Gateway's spec.infrastructure, as Istio reads it for the waypoints and
// gateways it deploys:
//   - labels and annotations go on every object rendered for the Gateway and
//     on its pods (a change rolls the pods); meshlet's own labels and
//     annotations win over one of the same key, since meshd finds the
//     waypoint by them;
//   - parametersRef names a ConfigMap in the Gateway's namespace whose keys
//     "deployment", "service" and "serviceAccount" hold YAML merged over the
//     rendered object as a strategic merge patch (kubectl patch's default:
//     containers merged by name, so `spec.template.spec.containers: [{name:
//     waypoint, resources: ...}]` changes only the resources), for replicas,
//     resources, node placement, tolerations, Service annotations and the
//     like; "horizontalPodAutoscaler" and "podDisruptionBudget" make those
//     objects for the waypoint (the YAML merged over one that targets its
//     Deployment, or selects its pods: minReplicas/maxReplicas/metrics,
//     minAvailable/maxUnavailable), removed again when the key goes; a
//     key set to null ("null" or "~") takes away the one the class
//     defaults make (the Deployment then keeps the replica count the
//     autoscaler left, unless "deployment" sets one). The
//     Gateway's name, namespace, owner, the Deployment's, Service's and
//     PodDisruptionBudget's selectors and the autoscaler's target stay
//     meshlet's.
//
// A parametersRef to anything but a ConfigMap, to one that does not exist,
// or one with another key or YAML that does not merge, rejects the Gateway
// (Accepted False, InvalidParameters, as the Gateway API asks) and leaves
// what was deployed for it as it was.
//
// Class defaults, as Istio has them: a ConfigMap in meshd's namespace
// (Options.ClassDefaultsNamespace, the mesh's) labelled
// gateway.istio.io/defaults-for-class=<class> has the same keys, merged
// over the objects of every Gateway of that class before the Gateway's own
// parameters, which thus win where both set a field; its
// horizontalPodAutoscaler and podDisruptionBudget keys make those objects
// for every Gateway of the class, the Gateway's keys merged over them. A
// Gateway whose parameters ask for an autoscaler drops the class defaults'
// replica count (the autoscaler owns it). One such ConfigMap per class is
// expected: of several, the oldest is used (then by name) and the others
// are named in a warning. Class defaults that cannot be used reject every
// Gateway of the class as a parametersRef does, the message naming the
// ConfigMap.

// ClassDefaultsLabel labels a ConfigMap of class defaults in the mesh's
// namespace; its value is the GatewayClass name.
const ClassDefaultsLabel = "gateway.istio.io/defaults-for-class"

// Params are the overlays Render merges over a Gateway's objects, Class's
// first, then Gateway's; nil is none.
type Params struct {
	// Class is the class defaults ConfigMap of the Gateway's class
	// (ClassDefaultsLabel).
	Class *corev1.ConfigMap
	// Gateway is the ConfigMap the Gateway's parametersRef names.
	Gateway *corev1.ConfigMap
}

func (p Params) empty() bool { return p.Class == nil && p.Gateway == nil }

// invalid is the ParamsError for an object the API server refuses with p's
// overlays merged in: the Gateway's parameters' (which the class defaults,
// when there are some, are merged under) when it has some, else the class
// defaults'.
func (p Params) invalid(gw *gatewayv1.Gateway, what string, err error) *ParamsError {
	var e *ParamsError
	switch {
	case p.Gateway == nil:
		e = classErrorf(gw, p.Class, "the %s they make is invalid: %v", what, err)
	case p.Class == nil:
		e = paramsErrorf(gw, "the %s it makes is invalid: %v", what, err)
	default:
		e = paramsErrorf(gw, "the %s it makes over the class defaults of ConfigMap %s/%s is invalid: %v", what, p.Class.Namespace, p.Class.Name, err)
	}
	e.invalid = true
	return e
}

// ParamsError is a Gateway's parametersRef, or its class defaults, that
// cannot be used; the message names the ConfigMap and what to fix.
type ParamsError struct {
	msg string
	// invalid: the API server refused an object the overlays make.
	invalid bool
}

func (e *ParamsError) Error() string { return e.msg }

func paramsErrorf(gw *gatewayv1.Gateway, format string, args ...any) *ParamsError {
	ref := gw.Spec.Infrastructure.ParametersRef
	return &ParamsError{msg: fmt.Sprintf("gateway %s/%s: spec.infrastructure.parametersRef %s %q: ", gw.Namespace, gw.Name, ref.Kind, ref.Name) + fmt.Sprintf(format, args...)}
}

// classErrorf is a ParamsError of gw's class defaults, cm.
func classErrorf(gw *gatewayv1.Gateway, cm *corev1.ConfigMap, format string, args ...any) *ParamsError {
	return &ParamsError{msg: fmt.Sprintf("gateway %s/%s: class defaults ConfigMap %s/%s (%s=%s): ", gw.Namespace, gw.Name, cm.Namespace, cm.Name, ClassDefaultsLabel, gw.Spec.GatewayClassName) + fmt.Sprintf(format, args...)}
}

// pickClassDefaults returns, of cms, the class defaults of class in
// namespace: the oldest ConfigMap there labelled ClassDefaultsLabel=class
// (then by name; nil when none is), and the names of the others so
// labelled, which are not used.
func pickClassDefaults(cms []corev1.ConfigMap, namespace string, class gatewayv1.ObjectName) (*corev1.ConfigMap, []string) {
	var match []*corev1.ConfigMap
	for i := range cms {
		cm := &cms[i]
		if v, ok := cm.Labels[ClassDefaultsLabel]; ok && v == string(class) && cm.Namespace == namespace && namespace != "" {
			match = append(match, cm)
		}
	}
	if len(match) == 0 {
		return nil, nil
	}
	slices.SortFunc(match, func(a, b *corev1.ConfigMap) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	var others []string
	for _, cm := range match[1:] {
		others = append(others, cm.Name)
	}
	return match[0], others
}

// Overlay keys of a parameters ConfigMap.
const (
	paramsDeployment     = "deployment"
	paramsService        = "service"
	paramsServiceAccount = "serviceAccount"
	paramsHPA            = "horizontalPodAutoscaler"
	paramsPDB            = "podDisruptionBudget"
)

var paramsKeys = []string{paramsDeployment, paramsService, paramsServiceAccount, paramsHPA, paramsPDB}

// ParamsConfigMap returns the name of the ConfigMap gw's parametersRef
// names, "" when it names none, or a ParamsError when it names something
// other than a ConfigMap.
func ParamsConfigMap(gw *gatewayv1.Gateway) (string, error) {
	inf := gw.Spec.Infrastructure
	if inf == nil || inf.ParametersRef == nil {
		return "", nil
	}
	if ref := inf.ParametersRef; ref.Group != "" || ref.Kind != "ConfigMap" {
		return "", paramsErrorf(gw, "group %q: only a ConfigMap (group \"\", kind ConfigMap) in the Gateway's namespace is supported", ref.Group)
	}
	return inf.ParametersRef.Name, nil
}

// infraMetadata returns gw's infrastructure labels and annotations.
func infraMetadata(gw *gatewayv1.Gateway) (labels, annotations map[string]string) {
	inf := gw.Spec.Infrastructure
	if inf == nil {
		return nil, nil
	}
	labels, annotations = map[string]string{}, map[string]string{}
	for k, v := range inf.Labels {
		labels[string(k)] = string(v)
	}
	for k, v := range inf.Annotations {
		annotations[string(k)] = string(v)
	}
	return labels, annotations
}

// under returns user's entries overridden by own's (meshlet's keys win).
func under(user, own map[string]string) map[string]string {
	if len(user) == 0 {
		return own
	}
	out := maps.Clone(user)
	maps.Copy(out, own)
	return out
}

// applyParams merges p's overlays over objs, the class defaults' then the
// Gateway's own, and puts meshlet's invariants back. No ConfigMap in p is
// no overlay.
func applyParams(gw *gatewayv1.Gateway, objs *Objects, p Params) error {
	if p.empty() {
		return nil
	}
	sa, dep, svc := *objs.ServiceAccount.Name, *objs.Deployment.Name, *objs.Service.Name
	owner := objs.Deployment.OwnerReferences
	objLabels := maps.Clone(objs.Deployment.Labels) // the deployer finds its Deployments by them
	selector := objs.Deployment.Spec.Selector
	podLabels := maps.Clone(objs.Deployment.Spec.Template.Labels)
	svcSelector := maps.Clone(objs.Service.Spec.Selector)
	for _, l := range []paramsLayer{{cm: p.Class, class: true}, {cm: p.Gateway}} {
		if l.cm == nil {
			continue
		}
		if err := l.apply(gw, objs, sa, dep, selector, p.Class); err != nil {
			return err
		}
	}
	// What meshd and the garbage collector rely on is not the overlays'.
	ns := gw.Namespace
	_, infraAnnotations := infraMetadata(gw)
	keep := func(m *metav1ac.ObjectMetaApplyConfiguration, name string) {
		m.Name, m.Namespace, m.GenerateName = &name, &ns, nil
		m.OwnerReferences = slices.Clone(owner)
		m.Labels = under(m.Labels, objLabels)
	}
	keep(objs.ServiceAccount.ObjectMetaApplyConfiguration, sa)
	keep(objs.Deployment.ObjectMetaApplyConfiguration, dep)
	keep(objs.Service.ObjectMetaApplyConfiguration, svc)
	// The autoscaler and budget have no metadata of Render's: theirs is
	// meshlet's as for the others, with the infrastructure annotations.
	extra := func(m **metav1ac.ObjectMetaApplyConfiguration) {
		if *m == nil {
			*m = &metav1ac.ObjectMetaApplyConfiguration{}
		}
		keep(*m, dep)
		(*m).Annotations = under((*m).Annotations, infraAnnotations)
	}
	if h := objs.HorizontalPodAutoscaler; h != nil {
		extra(&h.ObjectMetaApplyConfiguration)
		if h.Spec == nil {
			h.Spec = autoscalingv2ac.HorizontalPodAutoscalerSpec()
		}
		h.Spec.ScaleTargetRef = scaleTarget(dep)
	}
	if b := objs.PodDisruptionBudget; b != nil {
		extra(&b.ObjectMetaApplyConfiguration)
		if b.Spec == nil {
			b.Spec = policyv1ac.PodDisruptionBudgetSpec()
		}
		b.Spec.Selector = selector
	}
	d := objs.Deployment
	if d.Spec == nil {
		d.Spec = appsv1ac.DeploymentSpec()
	}
	d.Spec.Selector = selector
	if d.Spec.Template == nil {
		d.Spec.Template = corev1ac.PodTemplateSpec()
	}
	if d.Spec.Template.ObjectMetaApplyConfiguration == nil {
		d.Spec.Template.ObjectMetaApplyConfiguration = &metav1ac.ObjectMetaApplyConfiguration{}
	}
	d.Spec.Template.Labels = under(d.Spec.Template.Labels, podLabels)
	if objs.Service.Spec == nil {
		objs.Service.Spec = corev1ac.ServiceSpec()
	}
	objs.Service.Spec.Selector = svcSelector
	return nil
}

// paramsLayer is one ConfigMap of overlays: the class defaults, or the one
// the Gateway's parametersRef names.
type paramsLayer struct {
	cm    *corev1.ConfigMap
	class bool
}

// errorf is a ParamsError naming the layer's ConfigMap.
func (l paramsLayer) errorf(gw *gatewayv1.Gateway, format string, args ...any) *ParamsError {
	if l.class {
		return classErrorf(gw, l.cm, format, args...)
	}
	return paramsErrorf(gw, format, args...)
}

// apply merges the layer's overlays over objs (an autoscaler or budget an
// earlier layer made is overlaid, not made anew) and checks what the
// pods run as and that an autoscaler has the replica count to itself. sa
// and dep are the Gateway's ServiceAccount and Deployment names, selector
// its pods', class the class defaults (nil: none), named when the
// Gateway's parameters clash with them.
func (l paramsLayer) apply(gw *gatewayv1.Gateway, objs *Objects, sa, dep string, selector *metav1ac.LabelSelectorApplyConfiguration, class *corev1.ConfigMap) error {
	data := l.cm.Data
	var unknown []string
	for k := range data {
		if !slices.Contains(paramsKeys, k) {
			unknown = append(unknown, k)
		}
	}
	for k := range l.cm.BinaryData {
		unknown = append(unknown, k)
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return l.errorf(gw, "keys %s: meshlet reads only %s", strings.Join(unknown, ", "), strings.Join(paramsKeys, ", "))
	}
	// A key whose YAML is null takes away what an earlier layer (the class
	// defaults) made: a Gateway opts out of its class's autoscaler or
	// disruption budget.
	offHPA, offPDB := isNullYAML(data[paramsHPA]), isNullYAML(data[paramsPDB])
	if offHPA {
		objs.HorizontalPodAutoscaler = nil
	}
	if offPDB {
		objs.PodDisruptionBudget = nil
	}
	ownHPA := !offHPA && strings.TrimSpace(data[paramsHPA]) != ""
	if ownHPA && objs.Deployment.Spec != nil {
		// The autoscaler this layer asks for owns the count: a replica
		// count of the class defaults gives way to it.
		objs.Deployment.Spec.Replicas = nil
	}
	var err error
	if objs.Deployment, err = overlay(gw, l, paramsDeployment, objs.Deployment, data[paramsDeployment], appsv1.Deployment{}); err != nil {
		return err
	}
	if objs.Service, err = overlay(gw, l, paramsService, objs.Service, data[paramsService], corev1.Service{}); err != nil {
		return err
	}
	if objs.ServiceAccount, err = overlay(gw, l, paramsServiceAccount, objs.ServiceAccount, data[paramsServiceAccount], corev1.ServiceAccount{}); err != nil {
		return err
	}
	if ownHPA {
		base := objs.HorizontalPodAutoscaler
		if base == nil {
			base = autoscalingv2ac.HorizontalPodAutoscaler(dep, gw.Namespace).
				WithSpec(autoscalingv2ac.HorizontalPodAutoscalerSpec().WithScaleTargetRef(scaleTarget(dep)))
		}
		if objs.HorizontalPodAutoscaler, err = overlay(gw, l, paramsHPA, base, data[paramsHPA], autoscalingv2.HorizontalPodAutoscaler{}); err != nil {
			return err
		}
	}
	if y := data[paramsPDB]; !offPDB && strings.TrimSpace(y) != "" {
		base := objs.PodDisruptionBudget
		if base == nil {
			base = policyv1ac.PodDisruptionBudget(dep, gw.Namespace).
				WithSpec(policyv1ac.PodDisruptionBudgetSpec().WithSelector(selector))
		}
		if objs.PodDisruptionBudget, err = overlay(gw, l, paramsPDB, base, y, policyv1.PodDisruptionBudget{}); err != nil {
			return err
		}
	}
	d := objs.Deployment
	if d.Spec == nil {
		return nil
	}
	if t := d.Spec.Template; t != nil && t.Spec != nil && t.Spec.ServiceAccountName != nil && *t.Spec.ServiceAccountName != sa {
		return l.errorf(gw, "%s: the pods run as the Gateway's service account %q, not %q", paramsDeployment, sa, *t.Spec.ServiceAccountName)
	}
	// An autoscaler owns the Deployment's replica count: a count of the
	// deployer's too would be put back at every reconcile, undoing each
	// scaling (Istio's gateway templates leave replicas out with an HPA).
	if objs.HorizontalPodAutoscaler != nil && d.Spec.Replicas != nil {
		hpa := paramsHPA
		if !ownHPA && class != nil {
			hpa = fmt.Sprintf("the class defaults' %s (ConfigMap %s/%s)", paramsHPA, class.Namespace, class.Name)
		}
		return l.errorf(gw, "%s sets spec.replicas (%d) and %s scales the same Deployment: remove replicas, the autoscaler's minReplicas/maxReplicas set the count", paramsDeployment, *d.Spec.Replicas, hpa)
	}
	return nil
}

// isNullYAML reports whether y is YAML's null (null, Null, NULL or ~),
// the value that switches a layer's object off.
func isNullYAML(y string) bool {
	switch strings.TrimSpace(y) {
	case "null", "Null", "NULL", "~":
		return true
	}
	return false
}

// scaleTarget is the autoscaler's target: the Gateway's Deployment.
func scaleTarget(deployment string) *autoscalingv2ac.CrossVersionObjectReferenceApplyConfiguration {
	return autoscalingv2ac.CrossVersionObjectReference().WithAPIVersion("apps/v1").WithKind("Deployment").WithName(deployment)
}

// overlay merges the YAML patch (empty: none) over obj as a strategic merge
// patch with schema's patch strategies, and returns the result as a new
// apply configuration.
func overlay[T any](gw *gatewayv1.Gateway, l paramsLayer, key string, obj *T, patch string, schema any) (*T, error) {
	if strings.TrimSpace(patch) == "" {
		return obj, nil
	}
	patchJSON, err := yaml.YAMLToJSON([]byte(patch))
	if err != nil {
		return nil, l.errorf(gw, "%s: not YAML: %v", key, err)
	}
	if !strings.HasPrefix(strings.TrimSpace(string(patchJSON)), "{") {
		return nil, l.errorf(gw, "%s: want a YAML mapping (fields of the %T to change)", key, schema)
	}
	orig, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("render gateway %s/%s: %w", gw.Namespace, gw.Name, err)
	}
	merged, err := strategicpatch.StrategicMergePatch(orig, patchJSON, schema)
	if err != nil {
		return nil, l.errorf(gw, "%s: does not merge: %v", key, err)
	}
	out := new(T)
	dec := json.NewDecoder(strings.NewReader(string(merged)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return nil, l.errorf(gw, "%s: %v", key, err)
	}
	return out, nil
}
