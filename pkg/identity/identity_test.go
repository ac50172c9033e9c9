package identity_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    identity.Workload
		wantErr string
	}{
		{"spiffe://cluster.local/ns/default/sa/web", identity.Workload{TrustDomain: td, Namespace: "default", ServiceAccount: "web"}, ""},
		{"spiffe://example.org/ns/a-b/sa/x.y", identity.Workload{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Namespace: "a-b", ServiceAccount: "x.y"}, ""},
		{"spiffe://cluster.local/ns/default", identity.Workload{}, "not a workload identity"},
		{"spiffe://cluster.local/sa/web/ns/default", identity.Workload{}, "not a workload identity"},
		{"spiffe://cluster.local/ns/default/sa/web/extra", identity.Workload{}, "not a workload identity"},
		{"spiffe://cluster.local/ns/Default/sa/web", identity.Workload{}, "namespace"},
		{"https://cluster.local/ns/default/sa/web", identity.Workload{}, "scheme"},
		{"spiffe://Cluster.Local/ns/default/sa/web", identity.Workload{}, "trust domain"},
		{"", identity.Workload{}, "parse SPIFFE ID"},
	}
	for _, tt := range tests {
		got, err := identity.Parse(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse(%q) error = %v; want one mentioning %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			continue
		}
		if got.String() != tt.in {
			t.Errorf("Parse(%q).String() = %q; want the input back", tt.in, got.String())
		}
	}
}

func TestNewID(t *testing.T) {
	id, err := identity.NewID(td, "bookinfo", "reviews")
	if err != nil || id.String() != "spiffe://cluster.local/ns/bookinfo/sa/reviews" {
		t.Fatalf("NewID() = %v, %v", id, err)
	}
	if _, err := identity.NewID(td, "", "x"); err == nil {
		t.Error("NewID with an empty namespace succeeded")
	}
	if _, err := identity.NewID(spiffeid.TrustDomain{}, "a", "b"); err == nil {
		t.Error("NewID with no trust domain succeeded")
	}
}

func TestNewCSR(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/web")
	der, key, err := identity.NewCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		t.Errorf("CSR SANs: URIs %v DNS %v IP %v; want exactly the one URI %s", csr.URIs, csr.DNSNames, csr.IPAddresses, id)
	}
	if key == nil {
		t.Error("no key returned")
	}
}

type testCA struct {
	ca    *ca.CA
	fail  atomic.Bool
	calls atomic.Int32
}

func newCA(t *testing.T, ttl time.Duration) *testCA {
	t.Helper()
	k, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.New(ca.Options{TrustDomain: td, Keys: k, DefaultTTL: ttl, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{ca: c}
}

func (c *testCA) issue(ctx context.Context, csr []byte) ([]*x509.Certificate, error) {
	c.calls.Add(1)
	if c.fail.Load() {
		return nil, errors.New("CA unreachable")
	}
	return c.ca.Sign(ctx, ca.Caller{}, csr, 0)
}

func TestRenewAt(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got, want := identity.RenewAt(nb, nb.Add(24*time.Hour)), nb.Add(12*time.Hour); !got.Equal(want) {
		t.Errorf("RenewAt = %v; want %v", got, want)
	}
}

// TestRenewerKeepsValidSVIDOnFailure issues an SVID, makes the CA fail, and
// checks that the source keeps serving the valid SVID while the renewer
// retries, then picks up a new one once the CA is back.
func TestRenewerKeepsValidSVIDOnFailure(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/web")
	c := newCA(t, time.Hour)
	src := identity.NewSVIDSource(nil)
	if _, err := src.GetX509SVID(); !errors.Is(err, identity.ErrNoSVID) {
		t.Fatalf("empty source: err = %v; want ErrNoSVID", err)
	}
	var errs atomic.Int32
	r, err := identity.NewRenewer(identity.RenewerOptions{ID: id, Source: src, Issue: c.issue, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, OnError: func(error) { errs.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	first, _ := src.GetX509SVID()
	if _, _, err := x509svid.Verify(first.Certificates, c.ca.Bundle()); err != nil || first.ID != id {
		t.Fatalf("issued SVID: id %s, verify %v", first.ID, err)
	}

	// The CA fails; a renewal attempt keeps the old SVID.
	c.fail.Store(true)
	if err := r.Renew(context.Background()); err == nil {
		t.Fatal("Renew succeeded against a failing CA")
	}
	if got, _ := src.GetX509SVID(); got != first {
		t.Fatal("failed renewal replaced the valid SVID")
	}

	// Run with a source whose SVID is already past half-life: it retries with
	// backoff while failing, then renews once the CA is back.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := newCA(t, 2*time.Millisecond)
	svid := mustIssue(t, old, id)
	src2 := identity.NewSVIDSource(svid)
	r2, _ := identity.NewRenewer(identity.RenewerOptions{ID: id, Source: src2, Issue: c.issue, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, OnError: func(error) { errs.Add(1) }})
	done := make(chan error, 1)
	go func() { done <- r2.Run(ctx) }()
	for errs.Load() < 3 {
		if ctx.Err() != nil {
			t.Fatal("renewer did not retry")
		}
		time.Sleep(time.Millisecond)
	}
	if got, _ := src2.GetX509SVID(); got != svid {
		t.Fatal("SVID replaced while renewal failed")
	}
	c.fail.Store(false)
	for {
		got, _ := src2.GetX509SVID()
		if got != svid {
			if _, _, err := x509svid.Verify(got.Certificates, c.ca.Bundle()); err != nil {
				t.Fatalf("renewed SVID does not verify: %v", err)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatal("renewer did not renew after the CA came back")
		}
		time.Sleep(time.Millisecond)
	}
	// A fresh 1h SVID is not renewed again right away.
	calls := c.calls.Load()
	time.Sleep(50 * time.Millisecond)
	if n := c.calls.Load() - calls; n != 0 {
		t.Errorf("renewer made %d more CA calls for a fresh SVID; want 0 before half-life", n)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run() = %v; want context.Canceled", err)
	}
}

func mustIssue(t *testing.T, c *testCA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	src := identity.NewSVIDSource(nil)
	r, err := identity.NewRenewer(identity.RenewerOptions{ID: id, Source: src, Issue: c.issue})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	s, _ := src.GetX509SVID()
	return s
}

func TestSVIDSourceRefusesIdentityChange(t *testing.T) {
	c := newCA(t, time.Hour)
	a := mustIssue(t, c, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/a"))
	b := mustIssue(t, c, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/b"))
	src := identity.NewSVIDSource(a)
	if err := src.Set(b); err == nil {
		t.Fatal("Set with another identity succeeded")
	}
	if err := src.Set(nil); err == nil {
		t.Fatal("Set(nil) succeeded")
	}
}

func TestBundleSource(t *testing.T) {
	c := newCA(t, time.Hour)
	bs := identity.NewBundleSource(c.ca.Bundle())
	if _, err := bs.GetX509BundleForTrustDomain(td); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.example")); err == nil {
		t.Error("bundle for an unknown trust domain returned")
	}
}

// TestBundleSourceAliases: an alias's SVIDs, signed by the mesh's one CA
// under the alias's name, verify against the mesh's roots (and follow them
// through a SetBundle), until the alias is taken back; a foreign CA's do
// not; Aliases and SameWorkload read the aliases both ways.
func TestBundleSourceAliases(t *testing.T) {
	c := newCA(t, time.Hour)
	oldTD := spiffeid.RequireTrustDomainFromString("old.example")
	// The same root signing under the old name: a mesh that moved from
	// old.example to cluster.local with its CA.
	keys, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	mesh, err := ca.New(ca.Options{TrustDomain: td, Keys: keys, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	old, err := ca.New(ca.Options{TrustDomain: oldTD, Keys: keys, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	aliasSVID := mustIssue(t, &testCA{ca: old}, spiffeid.RequireFromString("spiffe://old.example/ns/a/sa/b"))

	bs := identity.NewBundleSource(c.ca.Bundle()) // another root first: SetBundle below brings the mesh's
	bs.SetAliases(td, []spiffeid.TrustDomain{oldTD, td, oldTD, {}})
	verify := func() error {
		_, _, err := x509svid.Verify(aliasSVID.Certificates, bs)
		return err
	}
	if err := verify(); err == nil {
		t.Fatal("alias SVID verified against another CA's roots")
	}
	if err := bs.SetBundle(mesh.Bundle()); err != nil {
		t.Fatal(err)
	}
	if err := verify(); err != nil {
		t.Fatalf("alias SVID of the mesh's CA: %v; want verified against the mesh's roots", err)
	}
	foreign := spiffeid.RequireTrustDomainFromString("foreign.example")
	if got := bs.Aliases(td); len(got) != 1 || got[0] != oldTD {
		t.Errorf("Aliases(%s) = %v; want [%s] (itself, repeats and zero left out)", td, got, oldTD)
	}
	if got := bs.Aliases(oldTD); len(got) != 1 || got[0] != td {
		t.Errorf("Aliases(%s) = %v; want [%s]", oldTD, got, td)
	}
	if got := bs.Aliases(foreign); got != nil {
		t.Errorf("Aliases(%s) = %v; want none", foreign, got)
	}
	// An alias stands for one trust domain.
	bs.SetAliases(foreign, []spiffeid.TrustDomain{oldTD, td})
	if got := bs.Aliases(foreign); got != nil {
		t.Errorf("after SetAliases(%s, [%s %s]): Aliases = %v; want none", foreign, oldTD, td, got)
	}
	tests := []struct {
		a, b string
		want bool
	}{
		{"spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b", true},
		{"spiffe://old.example/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b", true},
		{"spiffe://cluster.local/ns/a/sa/b", "spiffe://old.example/ns/a/sa/b", true},
		{"spiffe://old.example/ns/a/sa/other", "spiffe://cluster.local/ns/a/sa/b", false},
		{"spiffe://foreign.example/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b", false},
	}
	for _, tt := range tests {
		if got := bs.SameWorkload(spiffeid.RequireFromString(tt.a), spiffeid.RequireFromString(tt.b)); got != tt.want {
			t.Errorf("SameWorkload(%s, %s) = %v; want %v", tt.a, tt.b, got, tt.want)
		}
	}
	bs.SetAliases(td, nil)
	if err := verify(); err == nil {
		t.Error("alias SVID verified after its alias was taken back")
	}
	if bs.SameWorkload(spiffeid.RequireFromString("spiffe://old.example/ns/a/sa/b"), spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")) {
		t.Error("SameWorkload across a taken-back alias")
	}
}

// TestBundleSourceChanged: Changed's channel closes at a SetBundle or
// SetAliases that changes the trust, and not at one that leaves it as it
// was (meshd pushes the whole bundle again for any change of it).
func TestBundleSourceChanged(t *testing.T) {
	r1, r2 := newCA(t, time.Hour), newCA(t, time.Hour)
	oldTD := spiffeid.RequireTrustDomainFromString("old.example")
	bs := identity.NewBundleSource(r1.ca.Bundle())
	bs.SetAliases(td, []spiffeid.TrustDomain{oldTD})
	tests := []struct {
		name   string
		set    func() error
		change bool
	}{
		{"the same roots again", func() error { return bs.SetBundle(r1.ca.Bundle()) }, false},
		{"the same aliases again", func() error { bs.SetAliases(td, []spiffeid.TrustDomain{oldTD}); return nil }, false},
		{"another root", func() error { return bs.SetBundle(r2.ca.Bundle()) }, true},
		{"the alias taken back", func() error { bs.SetAliases(td, nil); return nil }, true},
		{"no aliases again", func() error { bs.SetAliases(td, nil); return nil }, false},
		{"a refused empty bundle", func() error {
			_ = bs.SetBundle(x509bundle.New(td))
			return nil
		}, false},
	}
	for _, tt := range tests {
		ch := bs.Changed()
		if err := tt.set(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		select {
		case <-ch:
			if !tt.change {
				t.Errorf("%s: Changed fired; want no change", tt.name)
			}
		default:
			if tt.change {
				t.Errorf("%s: Changed did not fire; want a change", tt.name)
			}
		}
	}
}

// TestBundleSourceWatch: Watch calls its function once at the start, and
// once for changes that came while it ran, and returns when ctx ends.
func TestBundleSourceWatch(t *testing.T) {
	r1, r2 := newCA(t, time.Hour), newCA(t, time.Hour)
	bs := identity.NewBundleSource(r1.ca.Bundle())
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan int, 16)
	release := make(chan struct{})
	done := make(chan struct{})
	n := 0
	go func() {
		defer close(done)
		bs.Watch(ctx, func() {
			n++
			calls <- n
			if n == 2 {
				<-release // changes pile up while this call runs
			}
		})
	}()
	next := func(want int) {
		t.Helper()
		select {
		case got := <-calls:
			if got != want {
				t.Fatalf("call %d; want %d", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no call %d", want)
		}
	}
	next(1) // at the start
	if err := bs.SetBundle(r2.ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	next(2)
	for range 3 {
		bs.SetAliases(td, []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("old.example")})
		bs.SetAliases(td, nil)
	}
	close(release)
	next(3) // the six changes during call 2, as one
	select {
	case got := <-calls:
		t.Errorf("call %d with nothing changed since call 3", got)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after ctx ended")
	}
}
