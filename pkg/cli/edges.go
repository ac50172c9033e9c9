package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	dto "github.com/prometheus/client_model/go"
	"github.com/spf13/cobra"
)

// `meshctl metrics edges`: which workloads talk to which, and whether over
// mutual TLS, from the node agents' Istio TCP metrics (each connection as
// its destination reported it) and the waypoints' request counts, as
// Linkerd's viz edges: the audit of who still reaches a workload in
// plaintext (PERMISSIVE) and from where.

// edgeKey is one direction of traffic between two workloads.
type edgeKey struct{ src, dst workloadKey }

// edge is what the proxies counted of it since they started.
type edge struct {
	key                    edgeKey
	mtls, plain            float64 // connections opened, by security
	requests, plainReqs    float64 // through waypoints; those that came in plaintext
	identities             map[string]bool
	hasConnections, hasReq bool
}

func newEdgesCommand(s Streams, g *globalOptions) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use:   "edges",
		Short: "Which workloads talk to which, over mutual TLS or in plaintext, from the node agents and waypoints",
		Long: `Lists each pair of workloads with traffic between them, as the proxies counted it
since they started: the connections the destination's node agent took over
mutual TLS and in plaintext (a client outside the mesh, under PERMISSIVE, shows
as unknown), the requests waypoints carried (a client's requests through a
waypoint show as client to destination; its connections as client to
waypoint and waypoint to destination), and the identities the sources
proved. As Linkerd's viz edges.`,
		Example: `  meshctl metrics edges -n shop`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			edges := map[edgeKey]*edge{}
			if err := scrapeProxies(ctxOf(cmd), c, g.meshNamespace, func(fams map[string]*dto.MetricFamily) { addEdges(edges, fams) }); err != nil {
				return err
			}
			printEdges(s.Out, edgeRows(edges, namespace))
			return nil
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "only edges with a workload of this namespace at either end")
	return cmd
}

// addEdges adds one proxy's counts to edges.
func addEdges(edges map[edgeKey]*edge, fams map[string]*dto.MetricFamily) {
	get := func(l map[string]string) *edge {
		k := edgeKey{
			src: workloadKey{l["source_workload_namespace"], l["source_workload"]},
			dst: workloadKey{l["destination_workload_namespace"], l["destination_workload"]},
		}
		if k.dst.name == "" || k.dst.name == "unknown" {
			return nil
		}
		e := edges[k]
		if e == nil {
			e = &edge{key: k, identities: map[string]bool{}}
			edges[k] = e
		}
		if p := l["source_principal"]; p != "" && p != "unknown" {
			e.identities[p] = true
		}
		return e
	}
	for _, m := range fams["istio_tcp_connections_opened_total"].GetMetric() {
		l := labelsOf(m)
		if l["reporter"] != "destination" {
			continue // each connection once, where it arrived
		}
		e := get(l)
		if e == nil {
			continue
		}
		e.hasConnections = true
		if l["connection_security_policy"] == "mutual_tls" {
			e.mtls += m.GetCounter().GetValue()
		} else {
			e.plain += m.GetCounter().GetValue()
		}
	}
	for _, m := range fams["istio_requests_total"].GetMetric() {
		l := labelsOf(m)
		if l["reporter"] != "waypoint" {
			continue
		}
		if e := get(l); e != nil {
			e.hasReq = true
			e.requests += m.GetCounter().GetValue()
			if l["connection_security_policy"] != "mutual_tls" {
				e.plainReqs += m.GetCounter().GetValue()
			}
		}
	}
}

// edgeRows are the edges with a workload of namespace at either end (all
// for ""), plaintext first, then by source and destination.
func edgeRows(edges map[edgeKey]*edge, namespace string) []*edge {
	var out []*edge
	for _, e := range edges {
		if namespace == "" || e.key.src.namespace == namespace || e.key.dst.namespace == namespace {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if (a.plain+a.plainReqs > 0) != (b.plain+b.plainReqs > 0) {
			return a.plain+a.plainReqs > 0
		}
		return edgeName(a.key.src)+" "+edgeName(a.key.dst) < edgeName(b.key.src)+" "+edgeName(b.key.dst)
	})
	return out
}

func edgeName(k workloadKey) string {
	if k.name == "" || k.name == "unknown" {
		return "unknown"
	}
	return k.namespace + "/" + k.name
}

func printEdges(w io.Writer, rows []*edge) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tDESTINATION\tSECURED\tCONNECTIONS mTLS/plain\tREQUESTS\tSOURCE IDENTITY")
	for _, e := range rows {
		secure, plain := e.mtls+e.requests-e.plainReqs, e.plain+e.plainReqs
		secured := "yes"
		switch {
		case secure == 0 && plain == 0:
			secured = "-"
		case secure == 0:
			secured = "NO (plaintext)"
		case plain > 0:
			secured = "PARTLY (plaintext too)"
		}
		conns, reqs := "-", "-"
		if e.hasConnections {
			conns = fmt.Sprintf("%.0f/%.0f", e.mtls, e.plain)
		}
		if e.hasReq {
			reqs = fmt.Sprintf("%.0f", e.requests)
		}
		ids := make([]string, 0, len(e.identities))
		for id := range e.identities {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", edgeName(e.key.src), edgeName(e.key.dst), secured, conns, reqs, dash(strings.Join(ids, ",")))
	}
	_ = tw.Flush()
	if len(rows) == 0 {
		fmt.Fprintln(w, "no traffic between workloads seen yet: is a namespace enrolled? meshctl ambient enable <namespace>")
	}
}
