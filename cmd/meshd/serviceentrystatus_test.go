package main

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/pkg/controlplane"
)

func seAddr(value, host string) *networkingapi.ServiceEntryAddress {
	return &networkingapi.ServiceEntryAddress{Value: value, Host: host}
}

func hostAddr(host, value string) controlplane.HostAddress {
	return controlplane.HostAddress{Host: host, Value: netip.MustParseAddr(value)}
}

// TestMergeAddresses: meshd replaces the entries of status.addresses in
// the automatic range and keeps the others as they are; it reports no
// change when its entries already say what it wants, wherever they sit.
func TestMergeAddresses(t *testing.T) {
	other := seAddr("192.0.2.10", "api.example.com")     // outside the automatic range
	otherV6 := seAddr("2001:2::5", "api.example.com")    // Istio's IPv6 allocation: not meshd's
	bad := seAddr("not-an-address", "api.example.com")   // unreadable: not meshd's
	ours := seAddr("240.240.1.2", "api.example.com")     // what meshd wrote
	oldOurs := seAddr("240.240.7.7", "gone.example.com") // written for a host since removed
	tests := []struct {
		name        string
		current     []*networkingapi.ServiceEntryAddress
		want        []controlplane.HostAddress
		merged      []*networkingapi.ServiceEntryAddress
		wantChanged bool
	}{
		{"first write",
			nil, []controlplane.HostAddress{hostAddr("api.example.com", "240.240.1.2")},
			[]*networkingapi.ServiceEntryAddress{ours}, true},
		{"unchanged: no write",
			[]*networkingapi.ServiceEntryAddress{ours}, []controlplane.HostAddress{hostAddr("api.example.com", "240.240.1.2")},
			nil, false},
		{"unchanged with others' entries around ours: no write",
			[]*networkingapi.ServiceEntryAddress{ours, other, otherV6}, []controlplane.HostAddress{hostAddr("api.example.com", "240.240.1.2")},
			nil, false},
		{"moved address: ours replaced, others kept first",
			[]*networkingapi.ServiceEntryAddress{ours, other}, []controlplane.HostAddress{hostAddr("api.example.com", "240.240.3.4")},
			[]*networkingapi.ServiceEntryAddress{other, seAddr("240.240.3.4", "api.example.com")}, true},
		{"multi-host entry in want's order",
			[]*networkingapi.ServiceEntryAddress{oldOurs},
			[]controlplane.HostAddress{hostAddr("b.example.org", "240.240.0.9"), hostAddr("a.example.org", "240.240.0.9")},
			[]*networkingapi.ServiceEntryAddress{seAddr("240.240.0.9", "b.example.org"), seAddr("240.240.0.9", "a.example.org")}, true},
		{"host order changed: rewritten",
			[]*networkingapi.ServiceEntryAddress{seAddr("240.240.0.9", "a.example.org"), seAddr("240.240.0.9", "b.example.org")},
			[]controlplane.HostAddress{hostAddr("b.example.org", "240.240.0.9"), hostAddr("a.example.org", "240.240.0.9")},
			[]*networkingapi.ServiceEntryAddress{seAddr("240.240.0.9", "b.example.org"), seAddr("240.240.0.9", "a.example.org")}, true},
		{"no longer allocated (spec.addresses set): ours cleared, others kept",
			[]*networkingapi.ServiceEntryAddress{other, ours, otherV6, bad}, nil,
			[]*networkingapi.ServiceEntryAddress{other, otherV6, bad}, true},
		{"no longer allocated, only ours: cleared to nothing",
			[]*networkingapi.ServiceEntryAddress{ours}, nil,
			nil, true},
		{"nothing wanted, nothing of ours: no write",
			[]*networkingapi.ServiceEntryAddress{other}, nil,
			nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			merged, changed := mergeAddresses(tt.current, tt.want)
			if changed != tt.wantChanged {
				t.Fatalf("mergeAddresses(%v, %v) changed = %v; want %v", tt.current, tt.want, changed, tt.wantChanged)
			}
			if !changed {
				return
			}
			if diff := cmp.Diff(tt.merged, merged, protocmp.Transform()); diff != "" {
				t.Errorf("mergeAddresses(%v, %v) (-want +got):\n%s", tt.current, tt.want, diff)
			}
		})
	}
}

// TestWithAddresses: the copy carries the merged addresses and every other
// field of status as read; the object itself is not modified; a generation
// other than the one the addresses were computed for is not written.
func TestWithAddresses(t *testing.T) {
	cond := &metav1alpha1.IstioCondition{Type: "Reconciled", Status: "True", Reason: "Done"}
	se := &networkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Namespace: "foo", Name: "github", Generation: 2}}
	se.Status.Conditions = []*metav1alpha1.IstioCondition{cond}
	se.Status.ObservedGeneration = 2
	se.Status.Addresses = []*networkingapi.ServiceEntryAddress{seAddr("192.0.2.10", "api.github.com")}
	st := controlplane.ServiceEntryAddresses{Namespace: "foo", Name: "github", Generation: 2,
		Addresses: []controlplane.HostAddress{hostAddr("api.github.com", "240.240.1.2")}}

	next, changed := withAddresses(se, st)
	if !changed {
		t.Fatal("withAddresses: changed = false; want true")
	}
	want := se.DeepCopy()
	want.Status.Addresses = append(want.Status.Addresses, seAddr("240.240.1.2", "api.github.com"))
	if diff := cmp.Diff(want, next, protocmp.Transform()); diff != "" {
		t.Errorf("withAddresses (-want +got):\n%s", diff)
	}
	if len(se.Status.Addresses) != 1 {
		t.Errorf("withAddresses modified its input: status.addresses = %v", se.Status.Addresses)
	}
	if _, changed := withAddresses(next, st); changed {
		t.Error("withAddresses on its own result: changed = true; want false (no write)")
	}
	stale := st
	stale.Generation = 1
	if _, changed := withAddresses(se, stale); changed {
		t.Error("withAddresses with addresses computed for generation 1 of a generation-2 object: changed = true; want false")
	}
}
