package app

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/waypoint"
)

// ingressPort is one listener port of the config that an ingress gateway
// serves (--serve-listeners), in plaintext or terminating TLS.
type ingressPort struct {
	ln  net.Listener // the TCP listener; closing it stops the port
	tls *atomic.Pointer[tls.Config]
}

// ingressTLSConfigs builds the server TLS configuration of each TLS
// listener of l7, by port, so that a bad certificate is refused before the
// config is applied.
func ingressTLSConfigs(l7 *model.L7Config) (map[uint32]*tls.Config, error) {
	out := map[uint32]*tls.Config{}
	for _, l := range l7.Listeners {
		if l.TLS == nil || l.Port == 0 || l.Port == HBONEPort {
			continue
		}
		cfg, err := serverTLSConfig(l.TLS)
		if err != nil {
			return nil, fmt.Errorf("listener %q (port %d): %w", l.Name, l.Port, err)
		}
		out[l.Port] = cfg
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
	case model.TLSModeMutual:
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(t.ClientCAPEM)) {
			return nil, errors.New("tls mode MUTUAL: no usable client CA certificate")
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
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
func (s *state) syncPorts(p *waypoint.Proxy, l7 *model.L7Config, tlsByPort map[uint32]*tls.Config) error {
	want := map[uint32]bool{}
	for _, l := range l7.Listeners {
		if l.Port != 0 && l.Port != HBONEPort {
			want[l.Port] = true
		}
	}
	if s.ports == nil {
		s.ports = map[uint32]*ingressPort{}
	}
	for port, ip := range s.ports {
		wantTLS := tlsByPort[port] != nil
		if !want[port] || (ip.tls != nil) != wantTLS {
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
		ip := &ingressPort{ln: ln}
		if cfg := tlsByPort[port]; cfg != nil {
			ip.tls = &atomic.Pointer[tls.Config]{}
			ip.tls.Store(cfg)
		}
		opened = append(opened, ip)
	}
	for _, ip := range opened {
		port := uint32(ip.ln.Addr().(*net.TCPAddr).Port)
		s.ports[port] = ip
		served := ip.ln
		if ip.tls != nil {
			current := ip.tls
			served = tls.NewListener(ip.ln, &tls.Config{
				GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return current.Load(), nil },
			})
		}
		s.serveOn(p, served)
		s.log.Info("serving ingress listener", "port", port, "tls", ip.tls != nil)
	}
	return nil
}
