package proxy

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/hbone"
)

// tapEvents opens a tap on m's hub with query q and returns a function that
// waits for the stream's end and returns its events and end line.
func tapEvents(t *testing.T, m *mesh, q string) func() ([]configdump.ConnEvent, *configdump.TapEnd) {
	t.Helper()
	srv := httptest.NewServer(TapHandler(m.tap))
	t.Cleanup(srv.Close)
	res, err := http.Get(srv.URL + configdump.TapPath + "?" + q)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("tap ?%s = %s", q, res.Status)
	}
	for deadline := time.Now().Add(5 * time.Second); !m.tap.Active(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the tap never opened")
		}
	}
	return func() ([]configdump.ConnEvent, *configdump.TapEnd) {
		t.Helper()
		defer res.Body.Close()
		var events []configdump.ConnEvent
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			var l configdump.ConnTapLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("tap line %q: %v", sc.Text(), err)
			}
			if l.End != nil {
				return events, l.End
			}
			events = append(events, *l.Event)
		}
		t.Fatalf("tap stream ended without its end line: %v", sc.Err())
		return nil, nil
	}
}

// TestTapDurationOfEarlierConn: a connection opened before the tap began
// is reported closed with how long it lasted, by both its proxies.
func TestTapDurationOfEarlierConn(t *testing.T) {
	m := newMesh(t, "mlna-td", meshConfig{mode: ModeStrict, authorize: func(context.Context, AuthzRequest) Decision {
		return Decision{Allow: true}
	}})
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatalf("echo through the tunnel: %v", err)
	}
	const held = 200 * time.Millisecond
	time.Sleep(held)
	end := tapEvents(t, m, "max=2&seconds=20")
	if got, err := roundTrip(c, "bye"); err != nil || got != "bye" {
		t.Fatalf("echo through the tunnel: %q, %v", got, err)
	}
	events, _ := end()
	if len(events) != 2 {
		t.Fatalf("%d events; want the closing by each proxy", len(events))
	}
	for _, ev := range events {
		if ev.Kind != "closed" || time.Duration(ev.DurationMS*float64(time.Millisecond)) < held {
			t.Errorf("%s %s: duration %vms; want at least the %v it was open before the tap", ev.Reporter, ev.Kind, ev.DurationMS, held)
		}
	}
}

// TestTapConnectionEvents: while a tap is open, a connection through the
// tunnel is reported opened and closed by both its source's and its
// destination's proxy (workloads, addresses, service, identity, mutual
// TLS, the ALLOW policy, bytes each way and duration), a stream an
// AuthorizationPolicy denies is reported refused naming the policy, and a
// plaintext connection under STRICT refused with its reason and no
// security; no payload is ever in an event.
func TestTapConnectionEvents(t *testing.T) {
	m := newMesh(t, "mlna-tp", meshConfig{mode: ModeStrict, authorize: func(_ context.Context, r AuthzRequest) Decision {
		if r.Principal == idA {
			return Decision{Allow: true, Policy: "shop/allow-cart", Reason: "allowed by ALLOW policy shop/allow-cart"}
		}
		return Decision{Allow: false, Policy: "shop/deny-intruder", Reason: "denied by DENY policy shop/deny-intruder"}
	}})
	end := tapEvents(t, m, "max=6&seconds=20")

	msg := strings.Repeat("secret payload ", 100)
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	if got, err := roundTrip(c, msg); err != nil || got != msg {
		t.Fatalf("echo through the tunnel: %d bytes, %v", len(got), err)
	}
	waitClosed(t, m, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bApp := netip.AddrPortFrom(m.b.IPs[0], appPort)
	if _, err := dialTestTunnel(ctx, m.a.Netns, idBad, agentMark, Destination{Target: bApp, Via: netip.AddrPortFrom(m.b.IPs[0], PortTunnel)}); err == nil {
		t.Fatal("a stream from the intruder was served")
	}
	pc, err := netns.Dial(ctx, m.a.Netns, netip.AddrPortFrom(m.b.IPs[0], PortInbound).String(), netns.DialOptions{Timeout: 5 * time.Second})
	if err == nil {
		pc.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = roundTrip(pc, "plain")
		pc.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("plaintext under STRICT: %v; want a reset", err)
	}

	events, e := end()
	if e.Reason != "max events" || e.Events != 6 || e.Dropped != 0 {
		t.Errorf("end %+v; want 6 events, none dropped", e)
	}
	byReporter := map[string][]configdump.ConnEvent{}
	for _, ev := range events {
		if ev.Time.IsZero() || ev.SourceAddr == "" {
			t.Errorf("event %+v: no time or source address", ev)
		}
		byReporter[ev.Reporter] = append(byReporter[ev.Reporter], ev)
	}
	// The destination's closing and the next refusal may race: compare
	// each reporter's events opened, closed, refused (by reason).
	rank := map[string]int{"opened": 0, "closed": 1, "refused": 2}
	for _, evs := range byReporter {
		slices.SortStableFunc(evs, func(x, y configdump.ConnEvent) int {
			return cmp.Or(rank[x.Kind]-rank[y.Kind], strings.Compare(x.Reason, y.Reason))
		})
	}
	a := m.a.IPs[0].String()
	ignore := cmpopts.IgnoreFields(configdump.ConnEvent{}, "Time", "SourceAddr", "DurationMS", "Detail")
	want := map[string][]configdump.ConnEvent{
		"source": {
			{Kind: "opened", Reporter: "source", Source: "shop/cart", SourceIdentity: idA, Destination: "shop/db",
				DestinationAddr: bApp.String(), DestinationService: "db.shop.svc.cluster.local", ConnectionSecurityPolicy: "mutual_tls"},
			{Kind: "closed", Reporter: "source", Source: "shop/cart", SourceIdentity: idA, Destination: "shop/db",
				DestinationAddr: bApp.String(), DestinationService: "db.shop.svc.cluster.local", ConnectionSecurityPolicy: "mutual_tls",
				ReceivedBytes: int64(len(msg)), SentBytes: int64(len(msg))},
		},
		"destination": {
			// Without PeerWorkload the client is known by its address and
			// its proven identity.
			{Kind: "opened", Reporter: "destination", Source: a, SourceIdentity: idA, Destination: "shop/db",
				DestinationAddr: bApp.String(), ConnectionSecurityPolicy: "mutual_tls", Policy: "shop/allow-cart"},
			{Kind: "closed", Reporter: "destination", Source: a, SourceIdentity: idA, Destination: "shop/db",
				DestinationAddr: bApp.String(), ConnectionSecurityPolicy: "mutual_tls", Policy: "shop/allow-cart",
				ReceivedBytes: int64(len(msg)), SentBytes: int64(len(msg))},
			{Kind: "refused", Reporter: "destination", Source: a, SourceIdentity: idBad, Destination: "shop/db",
				DestinationAddr: bApp.String(), ConnectionSecurityPolicy: "mutual_tls", Policy: "shop/deny-intruder", Reason: ReasonDenied},
			{Kind: "refused", Reporter: "destination", Source: a, Destination: "shop/db",
				DestinationAddr: bApp.String(), ConnectionSecurityPolicy: "none", Reason: ReasonStrict},
		},
	}
	if diff := gocmp.Diff(want, byReporter, ignore); diff != "" {
		t.Errorf("tap events (-want +got):\n%s", diff)
	}
	for _, ev := range events {
		if ev.Kind == "closed" && ev.DurationMS <= 0 {
			t.Errorf("closed event %+v: no duration (the tap saw it open)", ev)
		}
		if ev.Kind == "refused" && !strings.Contains(ev.Detail, map[string]string{ReasonDenied: "DENY policy shop/deny-intruder", ReasonStrict: "STRICT"}[ev.Reason]) {
			t.Errorf("refused event detail %q does not say why (%s)", ev.Detail, ev.Reason)
		}
		if b, _ := json.Marshal(ev); strings.Contains(string(b), "secret") {
			t.Errorf("event %s carries payload", b)
		}
	}
	if m.tap.Taps() != 0 {
		t.Errorf("%d taps open after the stream ended; want 0", m.tap.Taps())
	}
}

// TestTapFilterRefused: a tap of refusals only (kind=refused, port) hears
// the refused connection and not the served one.
func TestTapFilterRefused(t *testing.T) {
	m := newMesh(t, "mlna-tf", meshConfig{mode: ModeStrict})
	end := tapEvents(t, m, "max=1&seconds=20&kind=refused&port=8080&ip="+m.b.IPs[0].String())
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	if got, err := roundTrip(c, "ok"); err != nil || got != "ok" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	pc, err := netns.Dial(context.Background(), m.a.Netns, netip.AddrPortFrom(m.b.IPs[0], PortInbound).String(), netns.DialOptions{Timeout: 5 * time.Second})
	if err == nil {
		pc.SetDeadline(time.Now().Add(10 * time.Second))
		roundTrip(pc, "plain")
		pc.Close()
	}
	events, _ := end()
	if len(events) != 1 || events[0].Kind != "refused" || events[0].Reason != ReasonStrict {
		t.Errorf("refusals-only tap gave %+v; want the STRICT refusal alone", events)
	}
}

// TestTapSameNode: a connection between two pods of one agent (no tunnel)
// is reported by both ends as a tunnelled one is: opened and closed with
// its bytes, mutual TLS, the ALLOW policy at the destination; one the
// destination's policy denies is reported refused by both, naming it.
func TestTapSameNode(t *testing.T) {
	var deny atomic.Bool
	m := newMesh(t, "mlna-ts", meshConfig{mode: ModeStrict, local: true, authorize: func(_ context.Context, r AuthzRequest) Decision {
		if deny.Load() {
			return Decision{Allow: false, Policy: "shop/deny-cart", Reason: "denied by DENY policy shop/deny-cart"}
		}
		return Decision{Allow: true, Policy: "shop/allow-cart", Reason: "allowed by ALLOW policy shop/allow-cart"}
	}})
	end := tapEvents(t, m, "max=6&seconds=20")
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	if got, err := roundTrip(c, "hello"); err != nil || got != "hello" {
		t.Fatalf("echo on the same-node path = %q, %v", got, err)
	}
	waitClosed(t, m, 2)
	deny.Store(true)
	if dc, err := netns.Dial(context.Background(), m.a.Netns, netip.AddrPortFrom(m.a.IPs[0], PortOutbound).String(), netns.DialOptions{Timeout: 5 * time.Second}); err == nil {
		dc.SetDeadline(time.Now().Add(10 * time.Second))
		roundTrip(dc, "hello")
		dc.Close()
	}
	events, _ := end()
	type key struct{ reporter, kind, policy, reason, security string }
	var got []key
	for _, e := range events {
		got = append(got, key{e.Reporter, e.Kind, e.Policy, e.Reason, e.ConnectionSecurityPolicy})
		if e.Kind == "closed" && (e.ReceivedBytes != 5 || e.SentBytes != 5) {
			t.Errorf("closed event %+v: want 5 bytes each way", e)
		}
	}
	slices.SortFunc(got, func(x, y key) int {
		return cmp.Or(strings.Compare(x.kind, y.kind), strings.Compare(x.reporter, y.reporter))
	})
	want := []key{
		{"destination", "closed", "shop/allow-cart", "", "mutual_tls"},
		{"source", "closed", "", "", "mutual_tls"},
		{"destination", "opened", "shop/allow-cart", "", "mutual_tls"},
		{"source", "opened", "", "", "mutual_tls"},
		{"destination", "refused", "shop/deny-cart", ReasonDenied, "mutual_tls"},
		{"source", "refused", "shop/deny-cart", ReasonDenied, "mutual_tls"},
	}
	if diff := gocmp.Diff(want, got, gocmp.AllowUnexported(key{})); diff != "" {
		t.Errorf("same-node tap events (-want +got):\n%s", diff)
	}
}

// TestRefusedTunnelConnCounted: a connection to a pod's 15008 that the
// HBONE server refused before any stream (here a peer whose certificate
// did not verify) is counted by reason for the destination workload, and
// tapped with the client's address and the server's words.
func TestRefusedTunnelConnCounted(t *testing.T) {
	m := newMesh(t, "mlna-rc", meshConfig{mode: ModeStrict})
	end := tapEvents(t, m, "max=1&seconds=20&kind=refused")
	before := refused(m, "destination", m.b.Workload, hbone.RefusedPeer)
	from := &net.TCPAddr{IP: net.ParseIP("198.19.9.9"), Port: 40000}
	m.pb.RefuseConn(from, hbone.RefusedPeer, "client certificate refused: unexpected trust domain")
	if got := refused(m, "destination", m.b.Workload, hbone.RefusedPeer) - before; got != 1 {
		t.Errorf("refused{reason=%q} moved by %v; want 1", hbone.RefusedPeer, got)
	}
	events, _ := end()
	if len(events) != 1 || events[0].Reason != hbone.RefusedPeer || events[0].SourceAddr != "198.19.9.9:40000" ||
		events[0].Destination != workloadName(m.b.Workload) || !strings.Contains(events[0].Detail, "trust domain") {
		t.Errorf("tap gave %+v; want the refusal from 198.19.9.9:40000 to %s with its reason and words", events, workloadName(m.b.Workload))
	}
}
