package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/waypoint"
)

// ingressPort is one listener port of the config that an ingress gateway
// serves (--serve-listeners), in plaintext or terminating TLS.
type ingressPort struct {
	ln  net.Listener // the TCP listener; closing it stops the port
	tls *atomic.Pointer[portTLS]
	// pass: the port has TLS passthrough routes; its connections are
	// read for their server name first (sniListener).
	pass bool
	// tcp: the port forwards whole connections (Proxy.ServeTCP).
	tcp bool
}

// portTLS is what a TLS port serves: a certificate per SNI host, and a
// default for the rest.
type portTLS struct {
	def   *tls.Config
	exact map[string]*tls.Config // lower-case host
	wild  []sniWildcard          // longest suffix first
	// anyHost: a certificate was given for "*" (not only the fallback).
	anyHost bool
	// several: the port's servers have different settings (certificate,
	// key, mode or client CAs), so a request may be misdirected.
	several bool
}

// misdirected reports whether a request for host, on a connection whose
// handshake chose its settings by server name sni, is for a host that
// other settings serve: its answer would otherwise come from a server
// whose certificate or client-certificate requirement the client never
// met (a client with no certificate connecting for shop.example.com and
// asking for a host whose server is MUTUAL). Istio's gateways answer such
// a request 404, each server's filter chain having only its own hosts'
// routes; meshlet answers 421, as the Gateway API asks of listeners whose
// TLS settings differ, so that a browser that reuses a connection across
// hosts its certificate names retries on a new one.
func (p *portTLS) misdirected(sni, host string) bool {
	if !p.several {
		return false
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return p.forServerName(host) != p.forServerName(sni)
}

// match is how specifically the port's certificates claim server name
// name, on model.PassthroughRoute.MatchSNI's scale (so that the more
// specific of a passthrough route and a certificate takes a connection):
// 0 when only the fallback certificate would serve it.
func (p *portTLS) match(name string) int {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if _, ok := p.exact[name]; ok && name != "" {
		return 1 << 20
	}
	for _, w := range p.wild {
		if strings.HasSuffix(name, w.suffix) {
			return 3 + len(w.suffix) // MatchSNI's 2+len("*"+suffix)
		}
	}
	if p.anyHost {
		return 1
	}
	return 0
}

type sniWildcard struct {
	suffix string // ".example.com" for "*.example.com"
	cfg    *tls.Config
}

// forServerName picks the configuration for a client hello's SNI: an exact
// host, else the longest matching wildcard, else the default.
func (p *portTLS) forServerName(name string) *tls.Config {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" {
		return p.def
	}
	if c, ok := p.exact[name]; ok {
		return c
	}
	for _, w := range p.wild {
		if strings.HasSuffix(name, w.suffix) {
			return w.cfg
		}
	}
	return p.def
}

// ingressTLSConfigs builds the server TLS configuration of each TLS
// listener of l7, by port, so that a bad certificate is refused before the
// config is applied.
func ingressTLSConfigs(l7 *model.L7Config) (map[uint32]*portTLS, error) {
	out := map[uint32]*portTLS{}
	for _, l := range l7.Listeners {
		if l.TLS == nil || l.Port == 0 || l.Port == HBONEPort {
			continue
		}
		// Servers with the same settings share one configuration, so that
		// a request for another of them is not misdirected (portTLS.misdirected).
		shared := map[string]*tls.Config{}
		configFor := func(t *model.ListenerTLS) (*tls.Config, error) {
			key := t.Mode + "\x00" + t.CertPEM + "\x00" + t.KeyPEM + "\x00" + t.ClientCAPEM
			if cfg, ok := shared[key]; ok {
				return cfg, nil
			}
			cfg, err := serverTLSConfig(t)
			if err == nil {
				shared[key] = cfg
			}
			return cfg, err
		}
		def, err := configFor(l.TLS)
		if err != nil {
			return nil, fmt.Errorf("listener %q (port %d): %w", l.Name, l.Port, err)
		}
		// Every server's hosts choose its certificate, the listener's own
		// included; a server for "*" (or else the listener's) serves the
		// names nobody claims.
		pt := &portTLS{exact: map[string]*tls.Config{}}
		index := func(cfg *tls.Config, hosts []string) {
			for _, h := range hosts {
				h = strings.ToLower(h)
				switch {
				case h == "*":
					if pt.def == nil {
						pt.def = cfg
					}
					pt.anyHost = true
				case strings.HasPrefix(h, "*."):
					pt.wild = append(pt.wild, sniWildcard{suffix: h[1:], cfg: cfg})
				default:
					if _, taken := pt.exact[h]; !taken {
						pt.exact[h] = cfg
					}
				}
			}
		}
		index(def, l.TLS.SNIHosts)
		for i := range l.SNI {
			cfg, err := configFor(&l.SNI[i])
			if err != nil {
				return nil, fmt.Errorf("listener %q (port %d) certificate for %v: %w", l.Name, l.Port, l.SNI[i].SNIHosts, err)
			}
			index(cfg, l.SNI[i].SNIHosts)
		}
		if pt.def == nil {
			pt.def = def
		}
		pt.several = len(shared) > 1
		slices.SortStableFunc(pt.wild, func(a, b sniWildcard) int { return len(b.suffix) - len(a.suffix) })
		out[l.Port] = pt
	}
	return out, nil
}

func serverTLSConfig(t *model.ListenerTLS) (*tls.Config, error) {
	pair, err := tls.X509KeyPair([]byte(t.CertPEM), []byte(t.KeyPEM))
	if err != nil {
		return nil, fmt.Errorf("load certificate and key: %w", err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
	}
	switch t.Mode {
	case model.TLSModeSimple:
	case model.TLSModeMutual, model.TLSModeOptionalMutual:
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(t.ClientCAPEM)) {
			return nil, fmt.Errorf("tls mode %s: no usable client CA certificate", t.Mode)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		if t.Mode == model.TLSModeOptionalMutual {
			cfg.ClientAuth = tls.VerifyClientCertIfGiven
		}
	default:
		return nil, fmt.Errorf("tls mode %q is not served", t.Mode)
	}
	return cfg, nil
}

// syncPorts opens the listener ports of l7 this gateway does not serve yet,
// swaps the certificates of the TLS ports it serves (open connections keep
// theirs), and closes the ports l7 no longer has. A port that changes
// between plaintext and TLS is reopened. tlsByPort comes from
// ingressTLSConfigs(l7).
func (s *state) syncPorts(p *waypoint.Proxy, l7 *model.L7Config, tlsByPort map[uint32]*portTLS) error {
	want, pass, tcp := map[uint32]bool{}, map[uint32]bool{}, map[uint32]bool{}
	for _, l := range l7.Listeners {
		if l.Port != 0 && l.Port != HBONEPort {
			want[l.Port] = true
			pass[l.Port] = len(l.Passthrough) > 0
			tcp[l.Port] = l.TCP != nil || len(l.TCPMatched) > 0
		}
	}
	if s.ports == nil {
		s.ports = map[uint32]*ingressPort{}
	}
	for port, ip := range s.ports {
		wantTLS := tlsByPort[port] != nil
		if !want[port] || (ip.tls != nil) != wantTLS || ip.pass != pass[port] || ip.tcp != tcp[port] {
			ip.ln.Close()
			delete(s.ports, port)
			s.log.Info("closed ingress listener", "port", port)
		}
	}
	var opened []*ingressPort
	for port := range want {
		if ip, ok := s.ports[port]; ok {
			if ip.tls != nil {
				ip.tls.Store(tlsByPort[port])
			}
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(s.opts.ListenHost, strconv.Itoa(int(port))))
		if err != nil {
			for _, o := range opened {
				o.ln.Close()
			}
			return fmt.Errorf("open ingress listener port %d: %w", port, err)
		}
		ip := &ingressPort{ln: ln, pass: pass[port], tcp: tcp[port]}
		if cfg := tlsByPort[port]; cfg != nil {
			ip.tls = &atomic.Pointer[portTLS]{}
			ip.tls.Store(cfg)
		}
		opened = append(opened, ip)
	}
	for _, ip := range opened {
		port := uint32(ip.ln.Addr().(*net.TCPAddr).Port)
		s.ports[port] = ip
		served := ip.ln
		switch {
		case ip.tcp:
			s.serveTCPOn(p, ip.ln, port)
			s.log.Info("serving ingress listener", "port", port, "tcp", true)
			continue
		case ip.pass:
			served = newSNIListener(ip.ln, p, port, ip.tls)
		case ip.tls != nil:
			current := ip.tls
			served = tls.NewListener(ip.ln, &tls.Config{
				GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
					return current.Load().forServerName(h.ServerName), nil
				},
			})
		}
		s.serveOn(p, served, misdirectedCheck(ip.tls))
		s.log.Info("serving ingress listener", "port", port, "tls", ip.tls != nil, "passthrough", ip.pass)
	}
	return nil
}

// misdirectedCheck is ServerOptions.Misdirected for a port whose TLS
// settings t holds (nil: a plaintext port, which needs none).
func misdirectedCheck(t *atomic.Pointer[portTLS]) func(sni, host string) bool {
	if t == nil {
		return nil
	}
	return func(sni, host string) bool {
		pt := t.Load()
		return pt != nil && pt.misdirected(sni, host)
	}
}

// sniListener serves a port with TLS passthrough routes: each connection's
// ClientHello is read for its server name; a passthrough route that claims
// it at least as specifically as the port's certificates gets the whole
// connection (Proxy.ForwardPassthrough), and any other is terminated with
// the port's certificate for that name and handed to Accept, for HTTP, or
// closed when the port has none. Once the port is closed, the connections
// it relays get a drain window (drain), as ServeTCP's do.
type sniListener struct {
	net.Listener
	proxy *waypoint.Proxy
	port  uint32
	tls   *atomic.Pointer[portTLS] // nil: nothing is terminated here
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	// relays ends the connections still read or relayed (cut, by drain);
	// handling counts them.
	relays   context.Context
	cut      context.CancelFunc
	handling sync.WaitGroup
	loopDone chan struct{} // loop has returned: handling only goes down
}

// peekTimeout bounds the wait for a connection's ClientHello.
const peekTimeout = 10 * time.Second

func newSNIListener(ln net.Listener, p *waypoint.Proxy, port uint32, t *atomic.Pointer[portTLS]) *sniListener {
	l := &sniListener{Listener: ln, proxy: p, port: port, tls: t, conns: make(chan net.Conn), done: make(chan struct{}), loopDone: make(chan struct{})}
	l.relays, l.cut = context.WithCancel(context.Background())
	go l.loop()
	return l
}

func (l *sniListener) loop() {
	defer close(l.loopDone)
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.once.Do(func() { close(l.done) }) // the port was closed
			return
		}
		l.handling.Go(func() { l.handle(c) })
	}
}

// drain waits, once the port is closed, for the connections still being
// read or relayed to end, at most d, then cuts the rest.
func (l *sniListener) drain(d time.Duration) {
	<-l.loopDone
	ended := make(chan struct{})
	go func() { l.handling.Wait(); close(ended) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ended:
	case <-t.C:
		l.cut()
		<-ended
	}
	l.cut()
}

func (l *sniListener) handle(c net.Conn) {
	// A cut ends the wait for a ClientHello and the relay alike; a
	// connection handed to Accept is the HTTP server's to drain.
	stop := context.AfterFunc(l.relays, func() { c.Close() })
	defer stop()
	sni, pc, err := waypoint.PeekServerName(c, peekTimeout)
	if err != nil {
		c.Close()
		return
	}
	var cfg *tls.Config
	term := 0
	if l.tls != nil {
		if pt := l.tls.Load(); pt != nil {
			cfg, term = pt.forServerName(sni), pt.match(sni)
		}
	}
	if pass := l.proxy.PassthroughMatch(l.port, sni); pass > 0 && pass >= term {
		l.proxy.ForwardPassthrough(l.relays, pc, l.port, sni)
		return
	}
	if cfg == nil {
		c.Close()
		return
	}
	select {
	case l.conns <- tls.Server(pc, cfg):
	case <-l.done:
		c.Close()
	}
}

func (l *sniListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *sniListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}
