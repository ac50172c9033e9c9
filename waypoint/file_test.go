package waypoint

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadConfigFile(t *testing.T) {
	app := backend(t, &named{name: "app"})
	good := `{
  "L7": {
    "Listeners": [{"Name": "http", "VirtualHosts": [{"Name": "app", "Domains": ["*"],
      "Routes": [{"Name": "r", "Destinations": [{"Cluster": "app"}], "Timeout": 2000000000}]}]}],
    "Clusters": [{"Name": "app", "Endpoints": [{"Address": "` + app + `"}]}]
  },
  "Policies": [{"Name": "deny-admin", "Namespace": "default", "Action": "DENY", "Rules": [{"To": [{"Paths": ["/admin*"]}]}]}]
}`
	dir := t.TempDir()
	path := filepath.Join(dir, "waypoint.json")
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfigFile(path)
	if err != nil {
		t.Fatalf("LoadConfigFile() = %v", err)
	}
	h := start(t, cfg, nil)
	client := newClient(t)
	if code, body := h.get(t, client, "/x", nil); code != 200 || body != "app" {
		t.Errorf("GET /x = %d %q; want 200 app", code, body)
	}
	if code, _ := h.get(t, client, "/admin/x", nil); code != 403 {
		t.Errorf("GET /admin/x = %d; want 403", code)
	}

	tests := []struct{ name, json, wantErr string }{
		{"typo", `{"L7": {"Listners": []}}`, "unknown field"},
		{"no L7", `{}`, "no L7 section"},
		{"not json", `nope`, "decode waypoint config"},
	}
	for _, tt := range tests {
		if _, err := LoadConfig(strings.NewReader(tt.json)); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("LoadConfig(%s) = %v; want error containing %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestConfigFromJSON(t *testing.T) {
	app := backend(t, &named{name: "app"})
	l7 := `{"Listeners":[{"Name":"http","VirtualHosts":[{"Name":"app","Domains":["*"],"Routes":[{"Name":"r","Destinations":[{"Cluster":"app"}]}]}]}],
		"Clusters":[{"Name":"app","Endpoints":[{"Address":"` + app + `"}]}],"FutureField":1}`
	pols := `[{"Name":"deny-delete","Namespace":"ns1","Action":"DENY","Rules":[{"To":[{"Methods":["DELETE"]}]}]}]`
	cfg, err := ConfigFromJSON([]byte(l7), []byte(pols))
	if err != nil {
		t.Fatalf("ConfigFromJSON() = %v", err)
	}
	h := start(t, cfg, nil)
	if code, body := h.get(t, newClient(t), "/", nil); code != 200 || body != "app" {
		t.Errorf("GET = %d %q; want 200 app", code, body)
	}
	if len(cfg.Policies) != 1 || cfg.Policies[0].Action != "DENY" {
		t.Errorf("policies = %+v", cfg.Policies)
	}
	if _, err := ConfigFromJSON([]byte("null"), nil); err == nil {
		t.Error("ConfigFromJSON(null) = nil error; want one")
	}
}
