package kubelet

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeTarget is where a probe runs: the container's namespaces.
type probeTarget struct {
	// netns is where httpGet and tcpSocket probes dial from; empty means
	// the kubelet's own netns, the node's, as a real kubelet probes the
	// pod's IP from the host network namespace (through the pod's
	// interface, where a mesh's inbound steering sees it).
	netns  string
	podIP  string                 // default host of httpGet and tcpSocket
	pid    int                    // container process, for exec probes
	cgroup string                 // container cgroup, for exec probes
	ports  []corev1.ContainerPort // for named ports
}

func probeTimeout(p *corev1.Probe) time.Duration {
	if p.TimeoutSeconds <= 0 {
		return time.Second
	}
	return time.Duration(p.TimeoutSeconds) * time.Second
}

// resolvePort turns a probe's port (number or container port name) into a number.
func resolvePort(port intstr.IntOrString, ports []corev1.ContainerPort) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, p := range ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("probe port %q names no container port", port.StrVal)
}

// runProbe runs one probe; nil means success.
func runProbe(ctx context.Context, p *corev1.Probe, t probeTarget) error {
	timeout := probeTimeout(p)
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := resolvePort(g.Port, t.ports)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = t.podIP
		}
		scheme := "http"
		if g.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), g.Path)
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialIn(t.netns, addr, timeout)
			},
			// The kubelet does not verify probe certificates either.
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
			DisableKeepAlives: true,
		}
		defer tr.CloseIdleConnections()
		rctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("probe url %s: %w", url, err)
		}
		req.Header.Set("User-Agent", "kube-probe/1.37")
		for _, h := range g.HTTPHeaders {
			req.Header.Set(h.Name, h.Value)
		}
		resp, err := (&http.Client{Transport: tr, Timeout: timeout}).Do(req)
		if err != nil {
			return fmt.Errorf("HTTP probe failed: %w", err)
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, t.ports)
		if err != nil {
			return err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = t.podIP
		}
		c, err := dialIn(t.netns, net.JoinHostPort(host, strconv.Itoa(port)), timeout)
		if err != nil {
			return fmt.Errorf("TCP probe failed: %w", err)
		}
		c.Close()
		return nil
	case p.Exec != nil:
		return execIn(ctx, t.pid, t.cgroup, p.Exec.Command, timeout)
	}
	return fmt.Errorf("probe handler not supported by the lab kubelet (use httpGet, tcpSocket or exec)")
}

// execIn runs command in the mount and network namespaces of pid (with
// nsenter, which can join a mount namespace where Go cannot), in cgroup.
func execIn(ctx context.Context, pid int, cgroup string, command []string, timeout time.Duration) error {
	if len(command) == 0 {
		return fmt.Errorf("exec probe has no command")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append([]string{"--target", strconv.Itoa(pid), "--mount", "--net", "--"}, command...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	if cgroup != "" {
		fd, err := unix.Open(cgroup, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open cgroup %s: %w", cgroup, err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return fmt.Errorf("command %q timed out after %v", command, timeout)
	}
	if err != nil {
		return fmt.Errorf("command %q failed: %v: %s", command, err, truncate(string(out), 200))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
