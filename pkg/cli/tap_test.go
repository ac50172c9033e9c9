package cli

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/tap"
	"github.com/meshlet/meshlet/waypoint"
)

// TestPrintTap: what `meshctl tap` prints of a real waypoint's tap stream:
// a line per request with its method, authority, path, status, latency,
// upstream and route, then the end on stderr; -o json passes the lines on;
// a stream cut before its end line is an error.
func TestPrintTap(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(app.Close)
	p, err := waypoint.New(waypoint.Options{Config: &waypoint.Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http", VirtualHosts: []model.VirtualHost{{Name: "shop", Domains: []string{"*"},
			Routes: []model.L7Route{{Name: "all", Destinations: []model.WeightedDestination{{Cluster: "app"}}}}}}}},
		Clusters: []model.L7Cluster{{Name: "app", Endpoints: []model.L7Endpoint{{Address: app.Listener.Addr().String()}}}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Serve(ctx, l, waypoint.ServerOptions{DetectTimeout: 200 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done; p.Close() })
	admin := httptest.NewServer(p.TapHandler())
	t.Cleanup(admin.Close)

	tap := func(raw bool) (string, string) {
		res, err := http.Get(admin.URL + configdump.TapPath + "?max=2&path=/cart")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		go func() {
			time.Sleep(100 * time.Millisecond) // the tap is open
			for _, path := range []string{"/other", "/cart/1?user=alice", "/cart/2"} {
				r, err := http.Get("http://" + l.Addr().String() + path)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
			}
		}()
		var out, errOut strings.Builder
		if err := printTap(res.Body, &out, &errOut, raw); err != nil {
			t.Fatal(err)
		}
		return out.String(), errOut.String()
	}
	out, errOut := tap(false)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} src=127\.0\.0\.1 dst=app :method=GET :authority=127\.0\.0\.1:\d+ :path=/cart/1 status=200 latency=\S+ upstream=` +
		regexp.QuoteMeta(app.Listener.Addr().String()) + ` route=all flags=- bytes=0/2$`)
	if len(lines) != 2 || !want.MatchString(lines[0]) || !strings.Contains(lines[1], ":path=/cart/2 ") || strings.Contains(out, "alice") {
		t.Errorf("meshctl tap printed:\n%s\nwant two lines, the first matching %s, no query", out, want)
	}
	if errOut != "tap ended (max events): 2 requests shown, 0 dropped\n" {
		t.Errorf("stderr %q", errOut)
	}
	out, _ = tap(true)
	if n := strings.Count(out, `{"event":`); n != 2 || !strings.Contains(out, `{"end":`) {
		t.Errorf("-o json printed:\n%s\nwant the two event lines and the end line", out)
	}
	var discard, slow strings.Builder
	if err := printTap(strings.NewReader(`{"end":{"reason":"max events","events":7,"dropped":3}}`+"\n"), &discard, &slow, false); err != nil ||
		slow.String() != "tap ended (max events): 7 requests shown, 3 dropped (the reader was too slow)\n" {
		t.Errorf("a stream that dropped events ends %q, %v; want the drops and why", slow.String(), err)
	}
	if err := printTap(strings.NewReader(`{"event":{"method":"GET"}}`+"\n"), &discard, &discard, false); err == nil || !strings.Contains(err.Error(), "without its end line") {
		t.Errorf("a cut stream: %v; want an error", err)
	}
}

// TestPrintConnTap: what `meshctl tap node/<node>` prints of a node
// agent's tap stream (pkg/tap's, as the agent serves it): a line per
// connection event — opened, closed with bytes and duration, refused with
// reason, policy and why — then the end on stderr; -o json passes the
// lines on.
func TestPrintConnTap(t *testing.T) {
	at := time.Date(2026, 12, 7, 10, 11, 12, 345e6, time.UTC)
	events := []configdump.ConnEvent{
		{Time: at, Kind: "opened", Reporter: "destination", Source: "shop/cart", SourceAddr: "10.0.0.1:40000",
			SourceIdentity: "spiffe://cluster.local/ns/shop/sa/cart", Destination: "shop/db", DestinationAddr: "10.0.0.2:5432",
			ConnectionSecurityPolicy: "mutual_tls", Policy: "shop/allow-cart"},
		{Time: at, Kind: "closed", Reporter: "source", Source: "shop/cart", SourceAddr: "10.0.0.1:40000", Destination: "shop/db",
			DestinationAddr: "10.0.0.2:5432", DestinationService: "db.shop.svc.cluster.local", ConnectionSecurityPolicy: "mutual_tls",
			ReceivedBytes: 120, SentBytes: 4096, DurationMS: 1500.25},
		{Time: at, Kind: "refused", Reporter: "destination", Source: "10.0.0.9", SourceAddr: "10.0.0.9:1234", Destination: "shop/db",
			DestinationAddr: "10.0.0.2:5432", ConnectionSecurityPolicy: "none", Reason: "strict_mtls_plaintext",
			Detail: "plaintext to port 5432, where PeerAuthentication is STRICT"},
		{Time: at, Kind: "refused", Reporter: "destination", Source: "shop/intruder", SourceAddr: "10.0.0.7:1",
			SourceIdentity: "spiffe://cluster.local/ns/shop/sa/intruder", Destination: "shop/db", DestinationAddr: "10.0.0.2:5432",
			ConnectionSecurityPolicy: "mutual_tls", Policy: "shop/deny-intruder", Reason: "policy_denied", Detail: "denied by DENY policy shop/deny-intruder"},
	}
	hub := &tap.Hub[configdump.ConnEvent]{}
	srv := httptest.NewServer(hub.Handler(nil))
	t.Cleanup(srv.Close)
	stream := func(raw bool) (string, string) {
		t.Helper()
		res, err := http.Get(srv.URL + configdump.TapPath + "?max=4")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		for deadline := time.Now().Add(5 * time.Second); !hub.Active(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the tap never opened")
			}
		}
		for _, e := range events {
			hub.Publish(e)
		}
		var out, errOut strings.Builder
		if err := printConnTap(res.Body, &out, &errOut, raw); err != nil {
			t.Fatal(err)
		}
		return out.String(), errOut.String()
	}
	out, errOut := stream(false)
	want := `10:11:12.345 opened  reporter=destination src=shop/cart src_addr=10.0.0.1:40000 identity=spiffe://cluster.local/ns/shop/sa/cart dst=shop/db dst_addr=10.0.0.2:5432 service=- security=mutual_tls policy=shop/allow-cart
10:11:12.345 closed  reporter=source src=shop/cart src_addr=10.0.0.1:40000 identity=- dst=shop/db dst_addr=10.0.0.2:5432 service=db.shop.svc.cluster.local security=mutual_tls policy=- bytes=120/4096 duration=1.50025s
10:11:12.345 refused reporter=destination src=10.0.0.9 src_addr=10.0.0.9:1234 identity=- dst=shop/db dst_addr=10.0.0.2:5432 service=- security=none policy=- reason=strict_mtls_plaintext detail="plaintext to port 5432, where PeerAuthentication is STRICT"
10:11:12.345 refused reporter=destination src=shop/intruder src_addr=10.0.0.7:1 identity=spiffe://cluster.local/ns/shop/sa/intruder dst=shop/db dst_addr=10.0.0.2:5432 service=- security=mutual_tls policy=shop/deny-intruder reason=policy_denied detail="denied by DENY policy shop/deny-intruder"
`
	if out != want {
		t.Errorf("meshctl tap node/… printed:\n%s\nwant:\n%s", out, want)
	}
	if errOut != "tap ended (max events): 4 events shown, 0 dropped\n" {
		t.Errorf("stderr %q", errOut)
	}
	out, _ = stream(true)
	if n := strings.Count(out, `{"event":`); n != 4 || !strings.Contains(out, `{"end":`) || !strings.Contains(out, `"reason":"policy_denied"`) {
		t.Errorf("-o json printed:\n%s\nwant the four event lines and the end line", out)
	}
}

// TestTapFlags: the filters of one kind of tap are refused on the other,
// and a target that is neither a waypoint nor node/ or pod/ is refused,
// before the cluster is asked.
func TestTapFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"node/w1", "--path", "/api"}, "filter a waypoint's requests"},
		{[]string{"waypoint", "--refused"}, "filter a node agent's connections"},
		{[]string{"waypoint", "--port", "80"}, "filter a node agent's connections"},
		{[]string{"svc/echo"}, "want a waypoint's name, node/<node>, pod/<pod> or deploy/<deployment>"},
		{[]string{"pod/"}, "want a waypoint's name"},
		{[]string{"deploy/"}, "want a waypoint's name"},
		{[]string{"deployment/echo", "--path", "/api"}, "filter a waypoint's requests"},
		{[]string{"pod/x", "--port", "70000"}, "--port 70000"},
	}
	for _, tt := range tests {
		var out, errOut strings.Builder
		cmd := newTapCommand(Streams{Out: &out, ErrOut: &errOut}, &globalOptions{})
		cmd.SetArgs(tt.args)
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("meshctl tap %v: %v; want an error saying %q", tt.args, err, tt.want)
		}
	}
}

// TestTapTargets: deploy/<name> taps the node agent of every node running
// the Deployment's pods, each for the addresses of its own pods; pods not
// running, being deleted or without an address, and pods the selector
// does not pick, are left out; pod/<name> taps its node for its addresses.
func TestTapTargets(t *testing.T) {
	pod := func(name, node string, phase corev1.PodPhase, labels map[string]string, ips ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: labels},
			Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		return p
	}
	echo := map[string]string{"app": "echo"}
	deleting := pod("echo-d", "w1", corev1.PodRunning, echo, "198.18.1.9")
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	deleting.Finalizers = []string{"x"}
	c := fakeCluster{kube: []runtime.Object{
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "shop"},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: echo}}},
		pod("echo-a", "w2", corev1.PodRunning, echo, "198.18.2.4", "fd00::24"),
		pod("echo-b", "w1", corev1.PodRunning, echo, "198.18.1.5"),
		pod("echo-c", "w1", corev1.PodRunning, echo, "198.18.1.6"),
		pod("echo-pending", "w3", corev1.PodPending, echo, "198.18.3.7"),
		pod("echo-noip", "w3", corev1.PodRunning, echo),
		pod("other", "w3", corev1.PodRunning, map[string]string{"app": "other"}, "198.18.3.8"),
		deleting,
	}, version: "v1.33.0"}.clients(t)
	for _, tt := range []struct {
		kind, name string
		want       []tapTarget
		wantErr    string
	}{
		{"deploy", "echo", []tapTarget{{"w1", []string{"198.18.1.5", "198.18.1.6"}}, {"w2", []string{"198.18.2.4", "fd00::24"}}}, ""},
		{"pod", "echo-a", []tapTarget{{"w2", []string{"198.18.2.4", "fd00::24"}}}, ""},
		{"node", "w3", []tapTarget{{node: "w3"}}, ""},
		{"deploy", "missing", nil, "get deployment shop/missing"},
		{"pod", "echo-noip", nil, "has no IP yet"},
	} {
		got, _, err := tapTargets(t.Context(), c, tt.kind, tt.name, "shop")
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s/%s: %v; want an error saying %q", tt.kind, tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s/%s: %+v, %v; want %+v", tt.kind, tt.name, got, err, tt.want)
		}
	}
}
