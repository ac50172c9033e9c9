package labtest

import (
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/lab"
)

// TestKubectlLogs: `kubectl logs` reaches the lab kubelet's API through the
// API server (client certificates both ways), with --tail and --limit-bytes.
func TestKubectlLogs(t *testing.T) {
	lb := lab.Shared(t)
	ns := lb.NewNamespace(t)
	lb.Apply(t, ns, `apiVersion: v1
kind: Pod
metadata: {name: talker, labels: {app: talker}}
spec:
  containers:
  - name: main
    image: meshlet.dev/echo:latest
    command: [/bin/sh, -c, "for i in 1 2 3; do echo line-$i; done; exec sleep 3600"]
`)
	lb.WaitPodsReady(t, ns, "app=talker", 1, 2*time.Minute)
	tests := []struct {
		args []string
		want string
	}{
		{nil, "line-1\nline-2\nline-3\n"},
		{[]string{"--tail", "1"}, "line-3\n"},
		{[]string{"--limit-bytes", "6"}, "line-1"},
		{[]string{"-c", "main", "--tail", "2"}, "line-2\nline-3\n"},
	}
	for _, tt := range tests {
		var out string
		lab.WaitFor(t, 20*time.Second, "kubectl logs "+strings.Join(tt.args, " "), func() (bool, error) {
			var err error
			out, err = lb.Kubectl(append([]string{"-n", ns, "logs", "talker"}, tt.args...)...)
			return err == nil && out == tt.want, err
		})
	}
	out, err := lb.Kubectl("-n", ns, "logs", "talker", "-c", "nosuch")
	if err == nil || !strings.Contains(out, "nosuch") {
		t.Errorf("logs of a container that does not exist: %v %q; want an error naming it", err, out)
	}
}
