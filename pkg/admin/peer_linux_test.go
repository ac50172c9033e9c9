package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/meshlet/meshlet/pkg/testutil"
)

// TestRootPeersOnly: with RootPeersOnly, the admin server answers a
// connection root owns (this test, as the kubelet's port-forward or root on
// the node would ask) and refuses, with 403 and the reason, one from an
// unprivileged process on the same host.
func TestRootPeersOnly(t *testing.T) {
	testutil.RequireRoot(t)
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash (for /dev/tcp as another user): %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dump := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "the dump") })
	if err := Serve(ctx, addr.String(), Options{RootPeersOnly: true, Handlers: map[string]http.Handler{"/config_dump": dump}}); err != nil {
		t.Fatal(err)
	}

	res, err := http.Get("http://" + addr.String() + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "the dump" {
		t.Errorf("GET as root = %d %q; want 200 \"the dump\"", res.StatusCode, body)
	}

	// The same request from uid 65534 (nobody), through bash's /dev/tcp.
	script := `exec 3<>/dev/tcp/127.0.0.1/` + itoa(addr.Port) + `; printf 'GET /config_dump HTTP/1.0\r\n\r\n' >&3; cat <&3`
	cmd := exec.Command(bash, "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("request as uid 65534: %v: %s", err, out)
	}
	if !strings.HasPrefix(string(out), "HTTP/1.0 403") || !strings.Contains(string(out), "uid 65534") || strings.Contains(string(out), "the dump") {
		t.Errorf("GET as uid 65534 =\n%s\nwant 403 naming uid 65534, not the dump", out)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
