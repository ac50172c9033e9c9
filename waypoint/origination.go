package waypoint

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"

	"github.com/meshlet/meshlet/pkg/model"
)

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// originateTLS wraps dial so that every connection it opens speaks TLS to
// the app behind the endpoint, as a DestinationRule's trafficPolicy.tls
// asks (Istio's TLS origination): the handshake is part of the dial (bounded
// by its connect timeout), and a failed one is a connection failure (UF),
// never a request sent in the clear. h2 selects the ALPN offered: "h2" for
// the HTTP/2 transport, "http/1.1" for the HTTP/1.1 client.
func originateTLS(dial dialFunc, base *tls.Config, h2 bool) dialFunc {
	cfg := base.Clone()
	if h2 {
		cfg.NextProtos = []string{"h2"}
	} else {
		cfg.NextProtos = []string{"http/1.1"}
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, &net.OpError{Op: "dial", Net: "tls", Err: fmt.Errorf("TLS origination to %s: %w", addr, err)}
		}
		return tc, nil
	}
}

// upstreamTLSConfig is the client side of TLS origination. The server's
// chain must lead to t.CAPEM's roots (the system's when empty) and name
// t.SNI, or one of t.SubjectAltNames when set; InsecureSkipVerify skips
// both, as Istio's does.
func upstreamTLSConfig(t *model.UpstreamTLS) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: t.SNI, MinVersion: tls.VersionTLS12}
	var roots *x509.CertPool // nil: the system's
	if t.CAPEM != "" {
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM([]byte(t.CAPEM)) {
			return nil, errors.New("tls: the CA certificates hold no PEM certificate")
		}
		cfg.RootCAs = roots
	}
	if t.Mode == model.TLSModeMutual {
		pair, err := tls.X509KeyPair([]byte(t.ClientCertPEM), []byte(t.ClientKeyPEM))
		if err != nil {
			return nil, fmt.Errorf("tls: client certificate and key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	switch {
	case t.InsecureSkipVerify:
		cfg.InsecureSkipVerify = true
	case len(t.SubjectAltNames) > 0:
		// The names to check are not the SNI: verify the chain here, then
		// the names (crypto/tls would check the chain against ServerName).
		sans := t.SubjectAltNames
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
				return err
			}
			if certNamesOneOf(leaf, sans) {
				return nil
			}
			return fmt.Errorf("the server certificate (DNS names %q, URIs %q) carries none of the subjectAltNames %q", leaf.DNSNames, uriStrings(leaf.URIs), sans)
		}
	}
	return cfg, nil
}

// certNamesOneOf reports whether cert carries one of names: a DNS name (its
// wildcards as for any hostname check) or a URI SAN such as a SPIFFE ID.
func certNamesOneOf(cert *x509.Certificate, names []string) bool {
	for _, n := range names {
		if cert.VerifyHostname(n) == nil {
			return true
		}
		for _, u := range cert.URIs {
			if u.String() == n {
				return true
			}
		}
	}
	return false
}

func uriStrings(us []*url.URL) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.String()
	}
	return out
}
