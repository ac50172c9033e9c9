package xds_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/client"
	"github.com/meshlet/meshlet/pkg/xds/modelview"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

// TestTrustDomainAliasesPushed: the trust domain aliases of the applied
// snapshot reach node agents and waypoints with the mesh's trust bundle
// (and the model they rebuild from it), stay through a root rotation, and
// go when a snapshot drops them; an alias that is no trust domain name is
// refused.
func TestTrustDomainAliasesPushed(t *testing.T) {
	snap := func(version uint64, aliases ...string) *model.Snapshot {
		return model.NewSnapshot(model.SnapshotInput{Version: version, TrustDomain: "cluster.local", TrustDomainAliases: aliases})
	}
	ts := startUnsynced(t, newPKI(t), 10*time.Millisecond)
	mustSet(t, ts.SetTrustBundle(&meshv1.TrustBundle{TrustDomain: "cluster.local", RootsPem: []string{ts.pki.rootPEM}}))
	if err := ts.Apply(snap(1, "old.example", "older.example")); err != nil {
		t.Fatal(err)
	}
	ts.MarkSynced()
	agent, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	wpID := xdsnode.Principal{Role: xdsnode.RoleWaypoint, Namespace: "ns1", Name: "waypoint"}.NodeID()
	wp, _ := startClient(t, ts, clientOpts{token: "waypoint:ns1/waypoint", nodeID: wpID, types: append(slices.Clone(allTypes), meshv1.WaypointConfigType)})
	waitSynced(t, agent)
	waitSynced(t, wp)

	bundle := func(c *client.Client) *meshv1.TrustBundle {
		r, ok := c.Get(meshv1.TrustBundleType, "cluster.local")
		if !ok {
			return nil
		}
		return r.Message.(*meshv1.TrustBundle)
	}
	want := []string{"old.example", "older.example"}
	for name, c := range map[string]*client.Client{"node agent": agent, "waypoint": wp} {
		if b := bundle(c); !slices.Equal(b.GetAliases(), want) || !slices.Equal(b.GetRootsPem(), []string{ts.pki.rootPEM}) {
			t.Errorf("%s: trust bundle = aliases %q, %d roots; want aliases %q with the one root", name, b.GetAliases(), len(b.GetRootsPem()), want)
		}
	}
	if got := modelview.BuildIn("cluster.local", agent, 1).TrustDomainAliases(); !slices.Equal(got, want) {
		t.Errorf("node agent's model: TrustDomainAliases() = %q; want %q", got, want)
	}
	if got := modelview.Build(wp, 1).TrustDomainAliases(); !slices.Equal(got, want) {
		t.Errorf("waypoint's model: TrustDomainAliases() = %q; want %q", got, want)
	}

	// A root rotation sets the bundle anew: the aliases stay.
	rotated := []string{newPKI(t).rootPEM, ts.pki.rootPEM}
	mustSet(t, ts.SetTrustBundle(&meshv1.TrustBundle{TrustDomain: "cluster.local", RootsPem: rotated}))
	eventually(t, "the rotated roots", func() bool { return len(bundle(agent).GetRootsPem()) == 2 })
	if got := bundle(agent).GetAliases(); !slices.Equal(got, want) {
		t.Errorf("after a root rotation: aliases %q; want %q", got, want)
	}

	// The mesh config drops them.
	if err := ts.Apply(snap(2)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the aliases gone", func() bool { return len(bundle(agent).GetAliases()) == 0 && len(bundle(wp).GetAliases()) == 0 })
	if got := bundle(agent).GetRootsPem(); !slices.Equal(got, rotated) {
		t.Errorf("after the aliases went: %d roots; want the rotated two", len(got))
	}

	if err := ts.Apply(snap(3, "Not A Domain")); err == nil || !strings.Contains(err.Error(), "Not A Domain") {
		t.Errorf("Apply with an alias that is no trust domain = %v; want an error naming it", err)
	}
}

// TestPushTrustBundleGeneration: PushTrustBundle names the generation that
// carries the roots: a client's ACK of the bundle changed just before (its
// aliases) is older, and once the client has ACKed that generation it holds
// the roots.
func TestPushTrustBundleGeneration(t *testing.T) {
	snap := func(version uint64, aliases ...string) *model.Snapshot {
		return model.NewSnapshot(model.SnapshotInput{Version: version, TrustDomain: "cluster.local", TrustDomainAliases: aliases})
	}
	ts := startUnsynced(t, newPKI(t), 10*time.Millisecond)
	mustSet(t, ts.SetTrustBundle(&meshv1.TrustBundle{TrustDomain: "cluster.local", RootsPem: []string{ts.pki.rootPEM}}))
	if err := ts.Apply(snap(1)); err != nil {
		t.Fatal(err)
	}
	ts.MarkSynced()
	agent, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, agent)
	status := func() xds.ClientStatus {
		cl := ts.Clients()
		if len(cl) != 1 {
			t.Fatalf("%d clients; want 1", len(cl))
		}
		return cl[0]
	}
	bundle := func() *meshv1.TrustBundle {
		r, _ := agent.Get(meshv1.TrustBundleType, "cluster.local")
		b, _ := r.Message.(*meshv1.TrustBundle)
		return b
	}

	if err := ts.Apply(snap(2, "old.example")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the aliases pushed and ACKed", func() bool {
		return len(bundle().GetAliases()) == 1 && status().Acked[meshv1.TrustBundleType] == ts.Generation()
	})
	rotated := []string{newPKI(t).rootPEM, ts.pki.rootPEM}
	gen, err := ts.PushTrustBundle(&meshv1.TrustBundle{TrustDomain: "cluster.local", RootsPem: rotated})
	if err != nil {
		t.Fatal(err)
	}
	if st := status(); st.AckedAtLeast(meshv1.TrustBundleType, gen) {
		t.Fatalf("the ACK of the aliases' push (%s) counts as one of generation %d, which carries the roots", st.Acked[meshv1.TrustBundleType], gen)
	}
	eventually(t, "the roots' generation ACKed", func() bool { return status().AckedAtLeast(meshv1.TrustBundleType, gen) })
	if got := bundle().GetRootsPem(); !slices.Equal(got, rotated) {
		t.Errorf("client ACKed generation %d with %d roots; want the two pushed", gen, len(got))
	}
}
