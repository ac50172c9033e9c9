package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestRedactEnv: a Pod's or a workload template's literal environment
// values never reach the archive; names and references to Secrets do.
func TestRedactEnv(t *testing.T) {
	for _, doc := range []string{`kind: Pod
spec:
  initContainers: [{name: init, env: [{name: DB_PASSWORD, value: hunter2}]}]
  containers: [{name: app, env: [{name: API_TOKEN, value: hunter2}, {name: FROM_SECRET, valueFrom: {secretKeyRef: {name: s, key: k}}}]}]
`, `kind: Deployment
spec:
  template:
    spec:
      containers: [{name: app, env: [{name: API_TOKEN, value: hunter2}]}]
`, `kind: Service
spec: {ports: [{port: 80}]}
`} {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		redactEnv(obj)
		out, _ := json.Marshal(obj)
		if strings.Contains(string(out), "hunter2") {
			t.Errorf("after redactEnv: %s; want no literal env value", out)
		}
		if strings.Contains(doc, "API_TOKEN") && !strings.Contains(string(out), `"name":"API_TOKEN","value":"[redacted]"`) {
			t.Errorf("after redactEnv: %s; want the variable's name kept, its value redacted", out)
		}
		if strings.Contains(doc, "secretKeyRef") && !strings.Contains(string(out), "secretKeyRef") {
			t.Errorf("after redactEnv: %s; want the secretKeyRef kept", out)
		}
	}
}

// TestBugReportKindsNoSecrets: the archive's objects never include Secrets.
func TestBugReportKindsNoSecrets(t *testing.T) {
	for _, k := range bugReportKinds() {
		if k.Kind == "Secret" || k.Kind == "ConfigMap" {
			t.Errorf("bug-report gathers %s", k.Kind)
		}
	}
}
