package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MeshdClientTLS returns a copy of base, a client config for meshd whose
// RootCAs hold the root it was started with (a mounted file), that also
// accepts a meshd certificate chaining to a root of td in bundles, read at
// each handshake. meshd's CA rotation pushes old and new roots to every
// proxy, waits for their acknowledgement and only then signs with the new
// key, its own serving certificate included; a mounted root file follows
// only when the kubelet syncs the ConfigMap (or never, for a file from
// elsewhere). Without the pushed roots a proxy that reconnects in between
// would refuse meshd. The pushed roots came over a connection verified with
// the roots trusted before, so the chain of trust is kept.
//
// The server name verified is base.ServerName. Verification moves from the
// handshake's own to VerifyConnection (the documented way to verify against
// roots that change); a certificate that chains to neither set is refused
// with both reasons.
func MeshdClientTLS(base *tls.Config, td spiffeid.TrustDomain, bundles *BundleSource) *tls.Config {
	c := base.Clone()
	static, serverName := base.RootCAs, base.ServerName
	c.InsecureSkipVerify = true // verified in VerifyConnection, against both root sets
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("meshd presented no certificate")
		}
		name := serverName
		if name == "" {
			name = cs.ServerName
		}
		inter := x509.NewCertPool()
		for _, ic := range cs.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		opts := x509.VerifyOptions{DNSName: name, Intermediates: inter, Roots: static}
		_, staticErr := cs.PeerCertificates[0].Verify(opts)
		if staticErr == nil {
			return nil
		}
		b, err := bundles.GetX509BundleForTrustDomain(td)
		if err != nil || len(b.X509Authorities()) == 0 {
			return fmt.Errorf("verify meshd's certificate: %w", staticErr)
		}
		opts.Roots = x509.NewCertPool()
		for _, r := range b.X509Authorities() {
			opts.Roots.AddCert(r)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("verify meshd's certificate: against the mounted root: %w; against the pushed trust bundle: %w", staticErr, err)
		}
		return nil
	}
	return c
}
