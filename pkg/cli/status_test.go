package cli

import (
	"io"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
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

// TestStatusLeader: meshctl status names the meshd replica holding the
// leader Lease, and reports a problem when ready replicas leave it unheld
// (released and not taken, or its holder stopped renewing it), since new
// waypoints are then not deployed; a Lease the user may not read, or that
// no replica made yet, is no problem.
func TestStatusLeader(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	lease := func(holder string, renewed time.Duration) *coordinationv1.Lease {
		d := int32(15)
		rt := metav1.NewMicroTime(now.Add(-renewed))
		return &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &d, RenewTime: &rt}}
	}
	meshd := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "meshd-a"},
		Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
	const problem = "no meshd replica holds the Lease meshlet-system/meshd-leader"
	tests := []struct {
		name        string
		lease       *coordinationv1.Lease // nil: not read
		wantLeader  string
		wantProblem bool
	}{
		{"held", lease("meshd-a_1a2b3c4d", 2*time.Second), "meshd-a", false},
		{"released", lease("", time.Second), "", true},
		{"holder stopped renewing", lease("meshd-b_00ff00ff", time.Minute), "", true},
		{"not readable or not made yet", nil, "", false},
	}
	// The state has no node agents: that problem is in every case.
	base := printStatus(io.Discard, &meshState{meshdPods: []corev1.Pod{meshd}, now: now}, "meshlet-system")
	for _, tt := range tests {
		st := &meshState{meshdPods: []corev1.Pod{meshd}, now: now}
		if tt.lease != nil {
			st.leaseRead, st.leader = true, leaseHolder(tt.lease, now)
		}
		var out strings.Builder
		problems := printStatus(&out, st, "meshlet-system")
		first, _, _ := strings.Cut(out.String(), "\n")
		if st.leader != tt.wantLeader || (tt.wantLeader != "" && !strings.HasSuffix(first, ", leader "+tt.wantLeader)) {
			t.Errorf("%s: leader %q, first line %q; want leader %q named on it", tt.name, st.leader, first, tt.wantLeader)
		}
		if got := strings.Contains(out.String(), problem); got != tt.wantProblem || (problems > base) != tt.wantProblem {
			t.Errorf("%s: %d problems, output:\n%s\nwant the unheld-Lease problem: %t", tt.name, problems, out.String(), tt.wantProblem)
		}
	}
}
