package admin

import (
	"strings"
	"testing"
)

func TestParseClusterDomain(t *testing.T) {
	tests := []struct {
		in, want string // want "" for an error
	}{
		{"cluster.local", "cluster.local"},
		{"Cluster.Local.", "cluster.local"},
		{"k8s.corp.example", "k8s.corp.example"},
		{"local", "local"},
		{"", ""},
		{".", ""},
		{"cluster..local", ""},
		{".cluster.local", ""},
		{"-cluster.local", ""},
		{"cluster_local", ""},
		{"cluster local", ""},
		{"cluster.local/x", ""},
		{strings.Repeat("a.", 127) + "local", ""}, // 259 bytes
		{strings.Repeat("a", 64) + ".local", ""},  // a 64-byte label
		{strings.Repeat("a", 63) + ".local", strings.Repeat("a", 63) + ".local"},
	}
	for _, tt := range tests {
		got, err := ParseClusterDomain(tt.in)
		if tt.want == "" {
			if err == nil || !strings.Contains(err.Error(), "--cluster-domain") {
				t.Errorf("ParseClusterDomain(%q) = %q, %v; want an error naming --cluster-domain", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseClusterDomain(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
