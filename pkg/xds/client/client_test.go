package client

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
)

func TestNewRequiresOptions(t *testing.T) {
	good := Options{
		Address: "meshd:15012", TLS: &tls.Config{}, NodeID: "node-agent~n",
		Token: func(context.Context) (string, error) { return "t", nil },
		Types: []string{"type.googleapis.com/meshlet.mesh.v1alpha1.Workload"},
	}
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr string
	}{
		{"complete", func(*Options) {}, ""},
		{"no address", func(o *Options) { o.Address = "" }, "Address is required"},
		{"no TLS", func(o *Options) { o.TLS = nil }, "only over TLS"},
		{"no token", func(o *Options) { o.Token = nil }, "service account token"},
		{"no node id", func(o *Options) { o.NodeID = "" }, "NodeID is required"},
		{"no types", func(o *Options) { o.Types = nil }, "nothing to subscribe to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.edit(&o)
			_, err := New(o)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New() = %v; want no error", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New() error = %v; want one containing %q", err, tt.wantErr)
			}
		})
	}
}
