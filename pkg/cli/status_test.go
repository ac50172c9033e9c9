package cli

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/pkg/meshstatus"
)

// TestCertExpiryAfterMeshdRestart: a meshd replica that signed nothing for a
// node agent (it restarted since) still shows the agent's certificate expiry
// from what the agent reported on connecting; per identity the latest
// certificate counts, and expired ones do not.
func TestCertExpiryAfterMeshdRestart(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	cart, db := "spiffe://cluster.local/ns/shop/sa/cart", "spiffe://cluster.local/ns/shop/sa/db"
	agent := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "meshlet-system", Name: "agent-x"}, Spec: corev1.PodSpec{NodeName: "node-a"}}
	report := func(signed []meshstatus.Cert, reported []meshstatus.Cert) meshstatus.Report {
		return meshstatus.Report{Meshd: "meshd-1", Updated: now, Generation: "7",
			Clients: []meshstatus.Client{{NodeID: "node-agent~node-a", Role: "node-agent", Node: "node-a", Connected: now.Add(-time.Minute),
				Acked: map[string]string{"t": "7"}, Certs: reported}},
			Certs: signed}
	}
	tests := []struct {
		name      string
		rep       meshstatus.Report
		wantCerts int
		wantExp   time.Time
	}{
		{"restarted meshd: only what the agent reported", report(nil, []meshstatus.Cert{
			{Node: "node-a", Identity: cart, NotAfter: now.Add(10 * time.Hour)},
			{Node: "node-a", Identity: db, NotAfter: now.Add(20 * time.Hour)},
		}), 2, now.Add(10 * time.Hour)},
		{"a renewal signed since replaces the reported one", report(
			[]meshstatus.Cert{{Node: "node-a", Pod: "meshlet-system/agent-x", Identity: cart, NotAfter: now.Add(24 * time.Hour)}},
			[]meshstatus.Cert{{Node: "node-a", Identity: cart, NotAfter: now.Add(10 * time.Hour)}},
		), 1, now.Add(24 * time.Hour)},
		{"expired certificates do not count", report(nil, []meshstatus.Cert{
			{Node: "node-a", Identity: cart, NotAfter: now.Add(-time.Hour)},
		}), 0, time.Time{}},
	}
	for _, tt := range tests {
		st := &meshState{reports: []meshstatus.Report{tt.rep}, now: now}
		r := st.row(agent, "node-agent", "node-agent~node-a")
		var exp time.Time
		if r.CertExpiry != nil {
			exp = *r.CertExpiry
		}
		if r.Certs != tt.wantCerts || !exp.Equal(tt.wantExp) || r.Status != proxySynced {
			t.Errorf("%s: certificates %d expiring %v (status %s); want %d expiring %v (synced)", tt.name, r.Certs, exp, r.Status, tt.wantCerts, tt.wantExp)
		}
	}
}
