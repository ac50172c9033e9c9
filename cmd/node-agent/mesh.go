package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshlet/meshlet/node-agent/agent"
	"github.com/meshlet/meshlet/node-agent/certs"
	"github.com/meshlet/meshlet/node-agent/mesh"
	"github.com/meshlet/meshlet/node-agent/tunnel"
	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/identity"
	xdsclient "github.com/meshlet/meshlet/pkg/xds/client"
	"github.com/meshlet/meshlet/pkg/xds/modelview"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

// startMesh connects to meshd (xDS config and the CA) and returns the
// agent's Mesh hooks: model resolution, PeerAuthentication and L4 policy,
// and the HBONE tunnel with certificates from meshd. configured says why the
// agent cannot decide for its pods yet (nil once meshd's first full config
// is in); dump fills the config dump's model and certificates; the returned
// stop function releases it all.
func startMesh(ctx context.Context, f flags) (m agent.Mesh, configured func() error, dump func(*configdump.Agent), stop func(), err error) {
	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("--trust-domain %q: %w", f.trustDomain, err)
	}
	rootPEM, err := os.ReadFile(f.meshdRootCert)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("read meshd root certificate (--meshd-root-cert): %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return nil, nil, nil, nil, fmt.Errorf("--meshd-root-cert %s holds no PEM certificate", f.meshdRootCert)
	}
	bundle, err := x509bundle.Parse(td, rootPEM)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("parse trust bundle from %s: %w", f.meshdRootCert, err)
	}
	bundles := identity.NewBundleSource(bundle)
	serverName := f.meshdServerName
	if serverName == "" {
		serverName, _, _ = strings.Cut(f.meshdAddress, ":")
	}
	// meshd is verified against the mounted root and the roots it pushes
	// (a CA rotation's new one before the mounted file has it).
	tlsCfg := identity.MeshdClientTLS(&tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS13}, td, bundles)
	token := func(context.Context) (string, error) {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return "", fmt.Errorf("read service account token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}

	conn, err := grpc.NewClient(f.meshdAddress, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)), xdsclient.WithMeshdReconnect())
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("meshd connection: %w", err)
	}
	cm, err := certs.New(certs.Options{Conn: conn, Token: token, TTL: 24 * time.Hour,
		OnError: func(id spiffeid.ID, err error) {
			log.Printf("renew certificate for %s (the valid one stays in use): %v", id, err)
		}})
	if err != nil {
		conn.Close()
		return nil, nil, nil, nil, err
	}

	store := mesh.NewStore()
	var xc *xdsclient.Client
	var gen uint64 // the model's version: one per rebuild (OnChange calls are serialized)
	rebuild := func(typeURL string, _, _ []string) {
		if typeURL == meshv1.TrustBundleType {
			for _, r := range xc.List(meshv1.TrustBundleType) {
				tb, ok := r.Message.(*meshv1.TrustBundle)
				if !ok {
					continue
				}
				btd, err := spiffeid.TrustDomainFromString(tb.GetTrustDomain())
				if err != nil {
					continue
				}
				b, err := x509bundle.Parse(btd, []byte(strings.Join(tb.GetRootsPem(), "\n")))
				if err == nil {
					_ = bundles.SetBundle(b)
				}
				if btd == td {
					// meshd sends valid names only; any other is left out.
					aliases, _ := identity.ParseTrustDomains(tb.GetAliases())
					bundles.SetAliases(td, aliases)
				}
			}
		}
		select {
		case <-xc.Synced():
		default:
			// Not before every type is in: workloads without their
			// policies would allow what a policy denies.
			return
		}
		gen++
		store.Set(modelview.BuildIn(f.trustDomain, xc, gen))
	}
	xc, err = xdsclient.New(xdsclient.Options{
		Address: f.meshdAddress, TLS: tlsCfg, Token: token,
		NodeID:   xdsnode.Principal{Role: xdsnode.RoleNodeAgent, Node: f.nodeName}.NodeID(),
		Types:    []string{meshv1.WorkloadType, meshv1.AddressType, meshv1.AuthorizationType, meshv1.PeerAuthenticationType, meshv1.TrustBundleType},
		OnChange: rebuild,
		// A meshd that did not sign them (restarted since) learns our
		// certificates' expiry from this when we reconnect.
		Metadata: func() *structpb.Struct { return xdsnode.CertsMetadata(cm.Certificates()) },
	})
	if err != nil {
		cm.Close()
		conn.Close()
		return nil, nil, nil, nil, err
	}
	xctx, cancel := context.WithCancel(ctx)
	go func() {
		if err := xc.Run(xctx); err != nil && xctx.Err() == nil {
			log.Printf("xDS client: %v", err)
		}
	}()

	tn, err := tunnel.New(tunnel.Options{TrustDomain: td, Bundle: bundles, TrustDomainAliases: bundles.Aliases,
		SVID: cm.SVID, Mark: agent.DefaultAgentMark, DrainTimeout: f.drainTimeout})
	if err != nil {
		cancel()
		cm.Close()
		conn.Close()
		return nil, nil, nil, nil, err
	}
	// A peer no longer trusted (an alias taken back, its root gone from
	// the bundle) loses the tunnels it has, as it would a new handshake.
	go bundles.Watch(xctx, func() {
		if n := tn.Reverify(); n > 0 {
			log.Printf("trust changed: closed %d tunnel connections whose peer is no longer trusted", n)
		}
	})
	m = mesh.New(mesh.Options{Snapshot: store.Load, Changed: store.Changed, Wait: decisionWait,
		Dial: tn.Dial, Server: tn.Server, Forget: tn.Forget,
		// ServiceEntry endpoints by hostname, resolved as the agent's own
		// names are (dnsPolicy ClusterFirstWithHostNet: the cluster DNS),
		// and kept for their TTL.
		LookupHost: mesh.DNSLookup(nil),
		Errorf:     log.Printf})
	configured = func() error {
		select {
		case <-xc.Synced():
			return nil
		default:
		}
		if err := xc.LastError(); err != nil {
			return fmt.Errorf("no mesh config from meshd yet (%s): %w", f.meshdAddress, err)
		}
		return fmt.Errorf("no mesh config from meshd yet (%s)", f.meshdAddress)
	}
	dump = func(d *configdump.Agent) {
		d.SetModel(store.Load())
		d.Certificates = cm.Dump()
	}
	stop = func() {
		cancel()
		cm.Close()
		conn.Close()
	}
	return m, configured, dump, stop, nil
}
