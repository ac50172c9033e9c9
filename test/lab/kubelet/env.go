package kubelet

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// envSources looks up what env and volumes refer to; the kubelet backs them
// with the API server, tests with maps.
type envSources struct {
	configMap func(namespace, name string) (map[string]string, error) // ConfigMap data (binaryData included)
	secret    func(namespace, name string) (map[string][]byte, error) // Secret data
}

// fieldValue resolves a downward API fieldRef.
func fieldValue(pod *corev1.Pod, podIP, hostIP, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	case "status.hostIP", "status.hostIPs":
		return hostIP, nil
	case "metadata.labels", "metadata.annotations":
		m := pod.Labels
		if path == "metadata.annotations" {
			m = pod.Annotations
		}
		return formatMap(m), nil
	}
	for _, p := range []struct {
		prefix string
		m      map[string]string
	}{{"metadata.labels['", pod.Labels}, {"metadata.annotations['", pod.Annotations}} {
		if strings.HasPrefix(path, p.prefix) && strings.HasSuffix(path, "']") {
			return p.m[strings.TrimSuffix(strings.TrimPrefix(path, p.prefix), "']")], nil
		}
	}
	return "", fmt.Errorf("downward API field %q is not supported by the lab kubelet", path)
}

// formatMap renders labels or annotations the way the downward API volume does.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, m[k])
	}
	return b.String()
}

// containerEnv builds a container's environment: the lab's defaults, envFrom,
// then env in order ($(VAR) references to earlier variables expanded).
func containerEnv(pod *corev1.Pod, c *corev1.Container, podIP, hostIP string, src envSources) ([]string, error) {
	vals := map[string]string{
		"PATH":                          "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOSTNAME":                      pod.Name,
		"KUBERNETES_SERVICE_HOST":       "198.18.128.1",
		"KUBERNETES_SERVICE_PORT":       "443",
		"KUBERNETES_PORT":               "tcp://198.18.128.1:443",
		"KUBERNETES_PORT_443_TCP":       "tcp://198.18.128.1:443",
		"KUBERNETES_SERVICE_PORT_HTTPS": "443",
	}
	if pod.Spec.HostNetwork {
		vals["HOSTNAME"] = "" // filled by the caller's node name below
	}
	order := []string{"PATH", "HOSTNAME", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBERNETES_PORT", "KUBERNETES_PORT_443_TCP", "KUBERNETES_SERVICE_PORT_HTTPS"}
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			data, err := src.configMap(pod.Namespace, ef.ConfigMapRef.Name)
			if err != nil {
				if ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configMap %q: %w", ef.ConfigMapRef.Name, err)
			}
			for k, v := range data {
				set(ef.Prefix+k, v)
			}
		case ef.SecretRef != nil:
			data, err := src.secret(pod.Namespace, ef.SecretRef.Name)
			if err != nil {
				if ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %q: %w", ef.SecretRef.Name, err)
			}
			for k, v := range data {
				set(ef.Prefix+k, string(v))
			}
		}
	}
	for _, e := range c.Env {
		v, err := envValue(pod, e, podIP, hostIP, src)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if e.ValueFrom == nil {
			v = expandVars(v, vals) // $(VAR) of variables defined before
		}
		set(e.Name, v)
	}
	if vals["HOSTNAME"] == "" {
		vals["HOSTNAME"] = pod.Spec.NodeName
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vals[k])
	}
	return out, nil
}

// envValue resolves one env entry.
func envValue(pod *corev1.Pod, e corev1.EnvVar, podIP, hostIP string, src envSources) (string, error) {
	if e.ValueFrom == nil {
		return e.Value, nil
	}
	vf := e.ValueFrom
	switch {
	case vf.FieldRef != nil:
		return fieldValue(pod, podIP, hostIP, vf.FieldRef.FieldPath)
	case vf.ConfigMapKeyRef != nil:
		ref := vf.ConfigMapKeyRef
		data, err := src.configMap(pod.Namespace, ref.Name)
		if err == nil {
			if v, ok := data[ref.Key]; ok {
				return v, nil
			}
			err = fmt.Errorf("key %q not found", ref.Key)
		}
		if ref.Optional != nil && *ref.Optional {
			return "", nil
		}
		return "", fmt.Errorf("configMap %q: %w", ref.Name, err)
	case vf.SecretKeyRef != nil:
		ref := vf.SecretKeyRef
		data, err := src.secret(pod.Namespace, ref.Name)
		if err == nil {
			if v, ok := data[ref.Key]; ok {
				return string(v), nil
			}
			err = fmt.Errorf("key %q not found", ref.Key)
		}
		if ref.Optional != nil && *ref.Optional {
			return "", nil
		}
		return "", fmt.Errorf("secret %q: %w", ref.Name, err)
	case vf.ResourceFieldRef != nil:
		return "0", nil // the lab sets no resource limits
	}
	return "", fmt.Errorf("unsupported valueFrom")
}
