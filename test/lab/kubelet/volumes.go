package kubelet

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// hostPassthrough are host paths every node shares with the machine: the one
// kernel's views and devices.
var hostPassthrough = []string{"/proc", "/dev", "/sys", "/lib/modules", "/usr", "/bin", "/sbin", "/lib", "/lib64"}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// hostPathSource maps a pod's hostPath to where it lives for this node:
// /sys/fs/bpf to the node's bpffs, /sys/fs/cgroup to the node's cgroup slice,
// the kernel's own trees (/proc, /dev, /sys, ...) to themselves, /run to
// /var/run, and every other path under NodeRoot.
func hostPathSource(nodeRoot, cgroupRoot, p string) string {
	p = path.Clean("/" + p)
	switch {
	case within(p, "/sys/fs/bpf"):
		return filepath.Join(nodeRoot, p)
	case within(p, "/sys/fs/cgroup"):
		return filepath.Join(cgroupRoot, strings.TrimPrefix(p, "/sys/fs/cgroup"))
	case within(p, "/run"):
		return filepath.Join(nodeRoot, "var", p)
	}
	for _, h := range hostPassthrough {
		if within(p, h) {
			return p
		}
	}
	return filepath.Join(nodeRoot, p)
}

// volumeWriter writes a pod's volumes into per-pod directories.
type volumeWriter struct {
	client     kubernetes.Interface
	pod        *corev1.Pod
	dir        string // NodeRoot/var/lib/kubelet/pods/<uid>/volumes
	nodeRoot   string
	cgroupRoot string
	podIP      string
	hostIP     string
}

// writeFiles writes name -> content into dir atomically (tmp + rename), so a
// refresh never shows a half-written token.
func writeFiles(dir string, files map[string][]byte, mode os.FileMode) error {
	for name, b := range files {
		p := filepath.Join(dir, filepath.Clean("/"+name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, b, mode); err != nil {
			return err
		}
		if err := os.Chmod(tmp, mode); err != nil {
			return err
		}
		if err := os.Rename(tmp, p); err != nil {
			return err
		}
	}
	return nil
}

func modeOr(m *int32, def os.FileMode) os.FileMode {
	if m == nil {
		return def
	}
	return os.FileMode(*m)
}

// project picks keys (all when items is empty) into files.
func project(data map[string][]byte, items []corev1.KeyToPath, what string) (map[string][]byte, error) {
	out := map[string][]byte{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = v
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("%s has no key %q", what, it.Key)
		}
		out[it.Path] = v
	}
	return out, nil
}

func (w *volumeWriter) configMapData(ctx context.Context, name string) (map[string][]byte, error) {
	cm, err := w.client.CoreV1().ConfigMaps(w.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get configMap %s/%s: %w", w.pod.Namespace, name, err)
	}
	out := map[string][]byte{}
	for k, v := range cm.Data {
		out[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		out[k] = v
	}
	return out, nil
}

func (w *volumeWriter) secretData(ctx context.Context, name string) (map[string][]byte, error) {
	s, err := w.client.CoreV1().Secrets(w.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", w.pod.Namespace, name, err)
	}
	return s.Data, nil
}

// token asks the API server for a token bound to the pod.
func (w *volumeWriter) token(ctx context.Context, src *corev1.ServiceAccountTokenProjection) ([]byte, error) {
	sa := w.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3607)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: w.pod.Name, UID: w.pod.UID},
	}}
	if src.Audience != "" {
		tr.Spec.Audiences = []string{src.Audience}
	}
	res, err := w.client.CoreV1().ServiceAccounts(w.pod.Namespace).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("request a token for service account %s/%s: %w", w.pod.Namespace, sa, err)
	}
	return []byte(res.Status.Token), nil
}

func (w *volumeWriter) downward(items []corev1.DownwardAPIVolumeFile) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, it := range items {
		if it.FieldRef == nil {
			continue // resourceFieldRef: the lab sets no resources
		}
		v, err := fieldValue(w.pod, w.podIP, w.hostIP, it.FieldRef.FieldPath)
		if err != nil {
			return nil, err
		}
		out[it.Path] = []byte(v)
	}
	return out, nil
}

// hasToken reports whether the pod has projected service account tokens,
// which need refreshing.
func hasToken(pod *corev1.Pod) bool {
	for _, v := range pod.Spec.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					return true
				}
			}
		}
	}
	return false
}

// tokenRefresh is how often projected tokens are rewritten.
const tokenRefresh = 20 * time.Minute

// write materializes every volume and returns volume name -> source path.
func (w *volumeWriter) write(ctx context.Context) (map[string]string, error) {
	paths := map[string]string{}
	for _, v := range w.pod.Spec.Volumes {
		dir := filepath.Join(w.dir, v.Name)
		var files map[string][]byte
		mode := os.FileMode(0o644)
		var err error
		switch {
		case v.HostPath != nil:
			src := hostPathSource(w.nodeRoot, w.cgroupRoot, v.HostPath.Path)
			if err := ensureHostPath(src, v.HostPath.Type); err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			paths[v.Name] = src
			continue
		case v.EmptyDir != nil:
		case v.ConfigMap != nil:
			mode = modeOr(v.ConfigMap.DefaultMode, mode)
			var data map[string][]byte
			if data, err = w.configMapData(ctx, v.ConfigMap.Name); err == nil {
				files, err = project(data, v.ConfigMap.Items, "configMap "+v.ConfigMap.Name)
			} else if v.ConfigMap.Optional != nil && *v.ConfigMap.Optional {
				err = nil
			}
		case v.Secret != nil:
			mode = modeOr(v.Secret.DefaultMode, mode)
			var data map[string][]byte
			if data, err = w.secretData(ctx, v.Secret.SecretName); err == nil {
				files, err = project(data, v.Secret.Items, "secret "+v.Secret.SecretName)
			} else if v.Secret.Optional != nil && *v.Secret.Optional {
				err = nil
			}
		case v.DownwardAPI != nil:
			mode = modeOr(v.DownwardAPI.DefaultMode, mode)
			files, err = w.downward(v.DownwardAPI.Items)
		case v.Projected != nil:
			mode = modeOr(v.Projected.DefaultMode, mode)
			files, err = w.projected(ctx, v.Projected)
		default:
			return nil, fmt.Errorf("volume %s: only hostPath, emptyDir, configMap, secret, downwardAPI and projected volumes run in the lab", v.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if v.EmptyDir != nil {
			os.Chmod(dir, 0o777) // any runAsUser may write, as with containerd
		}
		if err := writeFiles(dir, files, mode); err != nil {
			return nil, fmt.Errorf("volume %s: write files: %w", v.Name, err)
		}
		paths[v.Name] = dir
	}
	return paths, nil
}

func (w *volumeWriter) projected(ctx context.Context, p *corev1.ProjectedVolumeSource) (map[string][]byte, error) {
	out := map[string][]byte{}
	add := func(m map[string][]byte) {
		for k, v := range m {
			out[k] = v
		}
	}
	for _, s := range p.Sources {
		switch {
		case s.ServiceAccountToken != nil:
			tok, err := w.token(ctx, s.ServiceAccountToken)
			if err != nil {
				return nil, err
			}
			out[s.ServiceAccountToken.Path] = tok
		case s.ConfigMap != nil:
			data, err := w.configMapData(ctx, s.ConfigMap.Name)
			if err != nil {
				if s.ConfigMap.Optional != nil && *s.ConfigMap.Optional {
					continue
				}
				return nil, err
			}
			m, err := project(data, s.ConfigMap.Items, "configMap "+s.ConfigMap.Name)
			if err != nil {
				return nil, err
			}
			add(m)
		case s.Secret != nil:
			data, err := w.secretData(ctx, s.Secret.Name)
			if err != nil {
				if s.Secret.Optional != nil && *s.Secret.Optional {
					continue
				}
				return nil, err
			}
			m, err := project(data, s.Secret.Items, "secret "+s.Secret.Name)
			if err != nil {
				return nil, err
			}
			add(m)
		case s.DownwardAPI != nil:
			m, err := w.downward(s.DownwardAPI.Items)
			if err != nil {
				return nil, err
			}
			add(m)
		}
	}
	return out, nil
}

// ensureHostPath checks or creates a hostPath source by its type.
func ensureHostPath(p string, t *corev1.HostPathType) error {
	typ := corev1.HostPathUnset
	if t != nil {
		typ = *t
	}
	st, err := os.Stat(p)
	switch typ {
	case corev1.HostPathFileOrCreate:
		if os.IsNotExist(err) {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return fmt.Errorf("create hostPath file %s: %w", p, err)
			}
			return f.Close()
		}
		return err
	case corev1.HostPathDirectory, corev1.HostPathFile, corev1.HostPathSocket, corev1.HostPathCharDev, corev1.HostPathBlockDev:
		if err != nil {
			return fmt.Errorf("hostPath %s (type %s): %w", p, typ, err)
		}
		if typ == corev1.HostPathDirectory && !st.IsDir() {
			return fmt.Errorf("hostPath %s is not a directory", p)
		}
		return nil
	default: // unset or DirectoryOrCreate: a missing path becomes a directory
		if os.IsNotExist(err) {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return fmt.Errorf("create hostPath directory %s: %w", p, err)
			}
			return nil
		}
		return err
	}
}
