package kubelet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
)

const (
	// streamIdleTimeout closes a port-forward connection nothing has
	// crossed for this long: the kubelet's default
	// streamingConnectionIdleTimeout.
	streamIdleTimeout = 4 * time.Hour
	// streamCreationTimeout is how long the second stream (data or error)
	// of a forwarded connection may take to follow the first.
	streamCreationTimeout = 30 * time.Second
	// forwardDialTimeout bounds connecting to the pod's port.
	forwardDialTimeout = 10 * time.Second
	// forwardLinger is how long, once one direction of a forwarded
	// connection has ended, the other may go on before both are closed (as
	// containerd and socat do).
	forwardLinger = time.Second
)

// forwards serves /portForward/{namespace}/{pod}[/{uid}] with the kubelet's
// own server side (k8s.io/cri-streaming: SPDY, and websockets for clients
// that speak them) and keeps count of the forwarded connections, so that the
// API server's shutdown waits for them.
type forwards struct {
	k      *kubelet
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// start counts one more forwarded connection; false once closeAndWait ran.
func (f *forwards) start() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.wg.Add(1)
	return true
}

// closeAndWait refuses new forwarded connections and waits for the others.
func (f *forwards) closeAndWait() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.wg.Wait()
}

// serve answers the API server's pods/portforward: one upgraded connection
// that carries any number of forwarded connections to the pod's ports.
func (f *forwards) serve(w http.ResponseWriter, r *http.Request) {
	ns, name, uid := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("uid")
	pw, err := f.k.podWorkerFor(ns, name, uid)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	// V4Options{} for SPDY; a websocket client names its ports in the query.
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !f.start() {
		http.Error(w, "the kubelet is stopping", http.StatusServiceUnavailable)
		return
	}
	defer f.wg.Done()
	// The request's context ends when this handler returns or the kubelet
	// stops: either way the taken-over connection and every forwarded
	// connection on it are closed.
	ctx := r.Context()
	pf := &podForwarder{f: f, w: pw, ns: ns, name: name, ctx: ctx}
	portforward.ServePortForward(closeOnDone{ResponseWriter: w, ctx: ctx}, r, pf, ns+"/"+name, string(pw.uid), opts,
		streamIdleTimeout, streamCreationTimeout, []string{portforward.ProtocolV1Name})
}

// closeOnDone closes a connection taken over from the HTTP server (which then
// forgets it) when ctx is done.
type closeOnDone struct {
	http.ResponseWriter
	ctx context.Context
}

// Unwrap lets http.ResponseController reach the server's writer.
func (c closeOnDone) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (c closeOnDone) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := c.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the connection cannot be taken over for streaming")
	}
	conn, rw, err := h.Hijack()
	if err == nil {
		context.AfterFunc(c.ctx, func() { conn.Close() })
	}
	return conn, rw, err
}

// podWorkerFor finds the worker of a pod this kubelet runs, by namespace and
// name and, when uid is set, uid; a pod still running wins over a stopped
// one of the same name.
func (k *kubelet) podWorkerFor(ns, name, uid string) (*podWorker, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var found *podWorker
	for _, w := range k.workers {
		p := w.currentPod()
		if p.Namespace != ns || p.Name != name || (uid != "" && string(w.uid) != uid) {
			continue
		}
		if found == nil || (found.stopping() && !w.stopping()) {
			found = w
		}
	}
	if found == nil {
		if uid != "" {
			return nil, fmt.Errorf("pod %s/%s with uid %s does not run on node %s", ns, name, uid, k.cfg.NodeName)
		}
		return nil, fmt.Errorf("pod %s/%s does not run on node %s", ns, name, k.cfg.NodeName)
	}
	return found, nil
}

// podForwarder forwards the connections of one port-forward request to ports
// on one pod's loopback.
type podForwarder struct {
	f        *forwards
	w        *podWorker
	ns, name string
	ctx      context.Context // ends with the request
}

// PortForward connects to 127.0.0.1:port (or [::1]:port) inside the pod's
// network namespace, as a CRI runtime does, and copies between that
// connection and stream until either ends.
func (p *podForwarder) PortForward(_ context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	if !p.f.start() {
		return fmt.Errorf("pod %s/%s: the kubelet is stopping", p.ns, p.name)
	}
	defer p.f.wg.Done()
	conn, err := p.dial(port)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(p.ctx, func() { conn.Close(); resetStream(stream) })
	defer stop()
	pipe(conn, stream)
	return nil
}

// dial connects to the pod's port from inside its network namespace: a
// socket made there stays there. A hostNetwork pod has none of its own and
// shares the node's, the one the kubelet runs in.
func (p *podForwarder) dial(port int32) (net.Conn, error) {
	select {
	case <-p.w.done:
		return nil, fmt.Errorf("pod %s/%s: no longer runs on node %s", p.ns, p.name, p.w.k.cfg.NodeName)
	default:
	}
	pod := p.w.currentPod()
	p.w.mu.Lock()
	netns := p.w.netns
	p.w.mu.Unlock()
	where := "its network namespace"
	if pod.Spec.HostNetwork {
		netns, where = "", "the node's network namespace (hostNetwork)"
	} else if netns == "" {
		return nil, fmt.Errorf("pod %s/%s: forward port %d: the pod has no network namespace yet", p.ns, p.name, port)
	}
	v4 := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	conn, err := dialIn(netns, v4, forwardDialTimeout)
	if errors.Is(err, syscall.ECONNREFUSED) {
		// Maybe it listens on IPv6 loopback only.
		if c, err6 := dialIn(netns, net.JoinHostPort("::1", strconv.Itoa(int(port))), forwardDialTimeout); err6 == nil {
			return c, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: dial %s in %s: %v", p.ns, p.name, v4, where, dialCause(err))
	}
	return conn, nil
}

// dialCause is what went wrong in a dial, without the "dial tcp <addr>:
// connect:" the caller already says: "connection refused".
func dialCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	var sc *os.SyscallError
	if errors.As(err, &sc) {
		err = sc.Err
	}
	return err
}

// pipe copies both ways between conn and stream. When one direction ends its
// end is passed on (a half-close) and the other gets forwardLinger to finish;
// then both are closed.
func pipe(conn net.Conn, stream io.ReadWriteCloser) {
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(conn, stream)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		io.Copy(stream, conn)
		stream.Close() // the stream's write side: the client sees the end
		done <- struct{}{}
	}()
	<-done
	t := time.NewTimer(forwardLinger)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	conn.Close()
	resetStream(stream) // a read on the stream ends only with the stream
	<-done
}

// resetStream ends both directions of a stream (an httpstream.Stream can be
// reset; anything else is closed).
func resetStream(s io.ReadWriteCloser) {
	if r, ok := s.(interface{ Reset() error }); ok {
		r.Reset()
		return
	}
	s.Close()
}
