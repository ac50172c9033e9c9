package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	prommodel "github.com/prometheus/common/model"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// `meshctl metrics top`: per-workload traffic, live, from the node agents'
// and waypoints' own metrics (read through the API server's pod proxy, so it
// needs no Prometheus): new connections per second, open connections, bytes
// per second each way and RTT from the kernel, requests per second and the
// share of 5xx from the waypoints. Rates are the difference between two
// scrapes an --interval apart.

// workloadKey is a workload as the metrics label it.
type workloadKey struct{ namespace, name string }

// sample is one scrape of every proxy, summed per workload.
type sample struct {
	at time.Time
	// from the node agents, destination side (each connection once)
	opened, closed, sent, received map[workloadKey]float64
	// kernel RTT histogram bucket counts (upper bound in µs -> count), per workload
	rtt map[workloadKey]map[float64]float64
	// from the waypoints
	requests, errors map[workloadKey]float64
}

func newSample(at time.Time) *sample {
	return &sample{at: at, opened: map[workloadKey]float64{}, closed: map[workloadKey]float64{}, sent: map[workloadKey]float64{},
		received: map[workloadKey]float64{}, rtt: map[workloadKey]map[float64]float64{}, requests: map[workloadKey]float64{}, errors: map[workloadKey]float64{}}
}

// topRow is one line of the table.
type topRow struct {
	key                    workloadKey
	connRate, open         float64
	inRate, outRate        float64
	rttP50                 float64 // µs; NaN when unknown
	reqRate, errPercent    float64
	hasRequests, hasKernel bool
}

func newTopCommand(s Streams, g *globalOptions) *cobra.Command {
	var interval time.Duration
	var count int
	var namespace string
	metrics := &cobra.Command{Use: "metrics", Short: "Live metrics of the mesh"}
	top := &cobra.Command{
		Use:   "top",
		Short: "Per-workload connections, bytes, RTT, request rate and errors, live from the node agents and waypoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval < 500*time.Millisecond {
				return fmt.Errorf("--interval %s: use at least 500ms", interval)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx := ctxOf(cmd)
			prev, err := scrapeMesh(ctx, c, g.meshNamespace)
			if err != nil {
				return err
			}
			for i := 0; count <= 0 || i < count; i++ {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
				cur, err := scrapeMesh(ctx, c, g.meshNamespace)
				if err != nil {
					return err
				}
				if count != 1 {
					fmt.Fprint(s.Out, "\033[H\033[2J") // clear the terminal between frames
				}
				printTop(s.Out, topRows(prev, cur, namespace), cur.at.Sub(prev.at))
				prev = cur
			}
			return nil
		},
	}
	f := top.Flags()
	f.DurationVar(&interval, "interval", 2*time.Second, "time between samples (rates are over it)")
	f.IntVar(&count, "count", 0, "print this many frames and exit (0: until interrupted); 1 prints one table without clearing the screen")
	f.StringVarP(&namespace, "namespace", "n", "", "only workloads of this namespace")
	metrics.AddCommand(top, newEdgesCommand(s, g))
	return metrics
}

// scrapeMesh reads every node agent's and waypoint's metrics.
func scrapeMesh(ctx context.Context, c *clients, meshNS string) (*sample, error) {
	s := newSample(time.Now())
	return s, scrapeProxies(ctx, c, meshNS, s.add)
}

// scrapeProxies hands the metrics of every running node agent and waypoint
// to add, one proxy's at a time; a proxy that cannot be read is left out.
func scrapeProxies(ctx context.Context, c *clients, meshNS string, add func(map[string]*dto.MetricFamily)) error {
	agents, err := c.kube.CoreV1().Pods(meshNS).List(ctx, metav1.ListOptions{LabelSelector: nodeAgentSelector})
	if err != nil {
		return fmt.Errorf("list node agents in namespace %s: %w (is meshlet installed? run meshctl install)", meshNS, err)
	}
	gws, err := c.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: gatewayNameLabel})
	if err != nil {
		return fmt.Errorf("list waypoints: %w", err)
	}
	for _, p := range append(agents.Items, gws.Items...) {
		if p.Status.Phase != corev1.PodRunning {
			continue
		}
		raw, err := c.kube.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, "15020", "/metrics", nil).DoRaw(ctx)
		if err != nil {
			continue // a proxy that cannot be read now is left out of this frame
		}
		fams, err := parseMetrics(raw)
		if err != nil {
			continue
		}
		add(fams)
	}
	return nil
}

func parseMetrics(raw []byte) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(prommodel.UTF8Validation)
	return p.TextToMetricFamilies(bytes.NewReader(raw))
}

func labelsOf(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func (s *sample) add(fams map[string]*dto.MetricFamily) {
	dest := func(l map[string]string) (workloadKey, bool) {
		k := workloadKey{l["destination_workload_namespace"], l["destination_workload"]}
		return k, k.name != "" && k.name != "unknown"
	}
	for name, into := range map[string]map[workloadKey]float64{
		"istio_tcp_connections_opened_total": s.opened, "istio_tcp_connections_closed_total": s.closed,
		"istio_tcp_sent_bytes_total": s.sent, "istio_tcp_received_bytes_total": s.received,
	} {
		for _, m := range fams[name].GetMetric() {
			l := labelsOf(m)
			if l["reporter"] != "destination" {
				continue // each connection once, at the destination
			}
			if k, ok := dest(l); ok {
				into[k] += m.GetCounter().GetValue()
			}
		}
	}
	for _, m := range fams["meshlet_kernel_tcp_rtt_microseconds"].GetMetric() {
		l := labelsOf(m)
		k := workloadKey{l["namespace"], l["workload"]}
		if k.name == "" || k.name == "unknown" {
			continue
		}
		if s.rtt[k] == nil {
			s.rtt[k] = map[float64]float64{}
		}
		for _, b := range m.GetHistogram().GetBucket() {
			s.rtt[k][b.GetUpperBound()] += float64(b.GetCumulativeCount())
		}
	}
	for _, m := range fams["istio_requests_total"].GetMetric() {
		l := labelsOf(m)
		k, ok := dest(l)
		if !ok {
			continue
		}
		v := m.GetCounter().GetValue()
		s.requests[k] += v
		if strings.HasPrefix(l["response_code"], "5") {
			s.errors[k] += v
		}
	}
}

// topRows turns two samples into per-workload rates, busiest first.
func topRows(prev, cur *sample, namespace string) []topRow {
	secs := cur.at.Sub(prev.at).Seconds()
	keys := map[workloadKey]bool{}
	for _, m := range []map[workloadKey]float64{cur.opened, cur.requests} {
		for k := range m {
			keys[k] = true
		}
	}
	for k := range cur.rtt {
		keys[k] = true
	}
	var rows []topRow
	for k := range keys {
		if namespace != "" && k.namespace != namespace {
			continue
		}
		r := topRow{key: k, rttP50: math.NaN()}
		r.connRate = delta(prev.opened[k], cur.opened[k]) / secs
		r.open = cur.opened[k] - cur.closed[k]
		r.inRate = delta(prev.received[k], cur.received[k]) / secs
		r.outRate = delta(prev.sent[k], cur.sent[k]) / secs
		if reqs := delta(prev.requests[k], cur.requests[k]); cur.requests[k] > 0 {
			r.hasRequests = true
			r.reqRate = reqs / secs
			if reqs > 0 {
				r.errPercent = 100 * delta(prev.errors[k], cur.errors[k]) / reqs
			}
		}
		if b := cur.rtt[k]; len(b) > 0 {
			r.hasKernel = true
			r.rttP50 = histogramQuantile(0.5, b)
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.connRate+a.reqRate != b.connRate+b.reqRate {
			return a.connRate+a.reqRate > b.connRate+b.reqRate
		}
		return a.key.namespace+"/"+a.key.name < b.key.namespace+"/"+b.key.name
	})
	return rows
}

// delta is a counter's increase; a reset (the proxy restarted) counts from 0.
func delta(prev, cur float64) float64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}

// histogramQuantile estimates a quantile from cumulative bucket counts by
// upper bound, as Prometheus does (linear within the bucket).
func histogramQuantile(q float64, buckets map[float64]float64) float64 {
	bounds := make([]float64, 0, len(buckets))
	for b := range buckets {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	total := buckets[bounds[len(bounds)-1]]
	if total == 0 {
		return math.NaN()
	}
	rank, lower, below := q*total, 0.0, 0.0
	for _, b := range bounds {
		c := buckets[b]
		if c >= rank {
			if math.IsInf(b, 1) {
				return lower
			}
			if c == below {
				return b
			}
			return lower + (b-lower)*(rank-below)/(c-below)
		}
		lower, below = b, c
	}
	return lower
}

func printTop(w io.Writer, rows []topRow, over time.Duration) {
	fmt.Fprintf(w, "meshlet traffic by workload, rates over %s (node agents and waypoints)\n", over.Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "NAMESPACE\tWORKLOAD\tCONN/s\tOPEN\tIN B/s\tOUT B/s\tRTT p50\tREQ/s\tERR %\t")
	for _, r := range rows {
		rtt, req, errp := "-", "-", "-"
		if r.hasKernel && !math.IsNaN(r.rttP50) {
			rtt = (time.Duration(r.rttP50) * time.Microsecond).Round(time.Microsecond).String()
		}
		if r.hasRequests {
			req, errp = fmt.Sprintf("%.1f", r.reqRate), fmt.Sprintf("%.1f", r.errPercent)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s\t\n", r.key.namespace, r.key.name, r.connRate, r.open, r.inRate, r.outRate, rtt, req, errp)
	}
	_ = tw.Flush()
	if len(rows) == 0 {
		fmt.Fprintln(w, "no mesh traffic seen yet: is a namespace enrolled? meshctl ambient enable <namespace>")
	}
}
