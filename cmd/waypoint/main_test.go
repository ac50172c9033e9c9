package main

import (
	"context"
	"strings"
	"testing"
)

func TestServeAdminRefusesNonLoopback(t *testing.T) {
	tests := []struct {
		addr    string
		wantErr string
	}{
		{"0.0.0.0:0", "not a loopback address"},
		{":0", "not a loopback address"},
		{"198.18.0.1:0", "not a loopback address"},
		{"nonsense", "not host:port"},
		{"127.0.0.1:0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			err := serveAdmin(ctx, tt.addr)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("serveAdmin(%q) = %v; want nil", tt.addr, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("serveAdmin(%q) = %v; want an error containing %q", tt.addr, err, tt.wantErr)
			}
		})
	}
}
