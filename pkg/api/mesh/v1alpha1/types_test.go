package meshv1alpha1

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestTypeURLs checks that the exported type URLs are the ones anypb writes
// for the generated messages, so a client can decode what the server sends.
func TestTypeURLs(t *testing.T) {
	tests := []struct {
		want string
		msg  proto.Message
	}{
		{WorkloadType, &Workload{}},
		{AddressType, &Address{}},
		{AuthorizationType, &Authorization{}},
		{PeerAuthenticationType, &PeerAuthentication{}},
		{TrustBundleType, &TrustBundle{}},
		{WaypointConfigType, &WaypointConfig{}},
	}
	for _, tt := range tests {
		a, err := anypb.New(tt.msg)
		if err != nil {
			t.Fatalf("anypb.New(%T): %v", tt.msg, err)
		}
		if a.TypeUrl != tt.want {
			t.Errorf("type URL of %T = %q; want %q", tt.msg, a.TypeUrl, tt.want)
		}
		back, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("UnmarshalNew(%q): %v", a.TypeUrl, err)
			continue
		}
		if !proto.Equal(back, tt.msg) {
			t.Errorf("round trip of %T changed it", tt.msg)
		}
	}
}
