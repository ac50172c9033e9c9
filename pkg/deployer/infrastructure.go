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
//     minAvailable/maxUnavailable), removed again when the key goes. The
//     Gateway's name, namespace, owner, the Deployment's, Service's and
//     PodDisruptionBudget's selectors and the autoscaler's target stay
//     meshlet's.
//
// A parametersRef to anything but a ConfigMap, to one that does not exist,
// or one with another key or YAML that does not merge, rejects the Gateway
// (Accepted False, InvalidParameters, as the Gateway API asks) and leaves
// what was deployed for it as it was.

// ParamsError is a Gateway's parametersRef that cannot be used; the message
// names the reference and what to fix.
type ParamsError struct{ msg string }

func (e *ParamsError) Error() string { return e.msg }

func paramsErrorf(gw *gatewayv1.Gateway, format string, args ...any) *ParamsError {
	ref := gw.Spec.Infrastructure.ParametersRef
	return &ParamsError{fmt.Sprintf("gateway %s/%s: spec.infrastructure.parametersRef %s %q: ", gw.Namespace, gw.Name, ref.Kind, ref.Name) + fmt.Sprintf(format, args...)}
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

// applyParams merges params' overlays over objs and puts meshlet's
// invariants back. params nil is no overlay.
func applyParams(gw *gatewayv1.Gateway, objs *Objects, params *corev1.ConfigMap) error {
	if params == nil {
		return nil
	}
	var unknown []string
	for k := range params.Data {
		if !slices.Contains(paramsKeys, k) {
			unknown = append(unknown, k)
		}
	}
	for k := range params.BinaryData {
		unknown = append(unknown, k)
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return paramsErrorf(gw, "keys %s: meshlet reads only %s", strings.Join(unknown, ", "), strings.Join(paramsKeys, ", "))
	}
	sa, dep, svc := *objs.ServiceAccount.Name, *objs.Deployment.Name, *objs.Service.Name
	owner := objs.Deployment.OwnerReferences
	objLabels := maps.Clone(objs.Deployment.Labels) // the deployer finds its Deployments by them
	selector := objs.Deployment.Spec.Selector
	podLabels := maps.Clone(objs.Deployment.Spec.Template.Labels)
	svcSelector := maps.Clone(objs.Service.Spec.Selector)
	var err error
	if objs.Deployment, err = overlay(gw, paramsDeployment, objs.Deployment, params.Data[paramsDeployment], appsv1.Deployment{}); err != nil {
		return err
	}
	if objs.Service, err = overlay(gw, paramsService, objs.Service, params.Data[paramsService], corev1.Service{}); err != nil {
		return err
	}
	if objs.ServiceAccount, err = overlay(gw, paramsServiceAccount, objs.ServiceAccount, params.Data[paramsServiceAccount], corev1.ServiceAccount{}); err != nil {
		return err
	}
	if y := params.Data[paramsHPA]; strings.TrimSpace(y) != "" {
		base := autoscalingv2ac.HorizontalPodAutoscaler(dep, gw.Namespace).
			WithSpec(autoscalingv2ac.HorizontalPodAutoscalerSpec().WithScaleTargetRef(scaleTarget(dep)))
		if objs.HorizontalPodAutoscaler, err = overlay(gw, paramsHPA, base, y, autoscalingv2.HorizontalPodAutoscaler{}); err != nil {
			return err
		}
	}
	if y := params.Data[paramsPDB]; strings.TrimSpace(y) != "" {
		base := policyv1ac.PodDisruptionBudget(dep, gw.Namespace).
			WithSpec(policyv1ac.PodDisruptionBudgetSpec().WithSelector(selector))
		if objs.PodDisruptionBudget, err = overlay(gw, paramsPDB, base, y, policyv1.PodDisruptionBudget{}); err != nil {
			return err
		}
	}
	// What meshd and the garbage collector rely on is not the overlay's.
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
	if d.Spec.Template.Spec != nil && d.Spec.Template.Spec.ServiceAccountName != nil && *d.Spec.Template.Spec.ServiceAccountName != sa {
		return paramsErrorf(gw, "%s: the pods run as the Gateway's service account %q, not %q", paramsDeployment, sa, *d.Spec.Template.Spec.ServiceAccountName)
	}
	// An autoscaler owns the Deployment's replica count: a count of the
	// deployer's too would be put back at every reconcile, undoing each
	// scaling (Istio's gateway templates leave replicas out with an HPA).
	if objs.HorizontalPodAutoscaler != nil && d.Spec.Replicas != nil {
		return paramsErrorf(gw, "%s sets spec.replicas (%d) and %s scales the same Deployment: remove replicas, the autoscaler's minReplicas/maxReplicas set the count", paramsDeployment, *d.Spec.Replicas, paramsHPA)
	}
	if objs.Service.Spec == nil {
		objs.Service.Spec = corev1ac.ServiceSpec()
	}
	objs.Service.Spec.Selector = svcSelector
	return nil
}

// scaleTarget is the autoscaler's target: the Gateway's Deployment.
func scaleTarget(deployment string) *autoscalingv2ac.CrossVersionObjectReferenceApplyConfiguration {
	return autoscalingv2ac.CrossVersionObjectReference().WithAPIVersion("apps/v1").WithKind("Deployment").WithName(deployment)
}

// overlay merges the YAML patch (empty: none) over obj as a strategic merge
// patch with schema's patch strategies, and returns the result as a new
// apply configuration.
func overlay[T any](gw *gatewayv1.Gateway, key string, obj *T, patch string, schema any) (*T, error) {
	if strings.TrimSpace(patch) == "" {
		return obj, nil
	}
	patchJSON, err := yaml.YAMLToJSON([]byte(patch))
	if err != nil {
		return nil, paramsErrorf(gw, "%s: not YAML: %v", key, err)
	}
	if !strings.HasPrefix(strings.TrimSpace(string(patchJSON)), "{") {
		return nil, paramsErrorf(gw, "%s: want a YAML mapping (fields of the %T to change)", key, schema)
	}
	orig, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("render gateway %s/%s: %w", gw.Namespace, gw.Name, err)
	}
	merged, err := strategicpatch.StrategicMergePatch(orig, patchJSON, schema)
	if err != nil {
		return nil, paramsErrorf(gw, "%s: does not merge: %v", key, err)
	}
	out := new(T)
	dec := json.NewDecoder(strings.NewReader(string(merged)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return nil, paramsErrorf(gw, "%s: %v", key, err)
	}
	return out, nil
}
