package waypoint

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/pkg/logfilter"
	"github.com/meshlet/meshlet/pkg/model"
)

// istioLabels are the standard labels of Istio's HTTP metrics
// (https://istio.io/latest/docs/reference/config/metrics/).
var istioLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// tcpLabels are the labels of the waypoint's TCP metrics: a subset of
// Istio's, since an L4 connection has no request.
var tcpLabels = []string{
	"reporter", "source_workload", "source_workload_namespace", "source_principal",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"response_flags", "connection_security_policy",
}

// The Istio metrics a proxy exports, in model.IstioMetrics order.
const (
	requestCount = iota
	requestDuration
	requestSize
	responseSize
	tcpOpened
	tcpClosed
	tcpSent
	tcpReceived
	numMetrics
)

// metricDef is one Istio metric as it is exported without overrides.
type metricDef struct {
	name, help string
	labels     []string  // istioLabels or tcpLabels
	buckets    []float64 // a histogram's; nil for a counter
}

var (
	durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	byteBuckets     = prometheus.ExponentialBuckets(1, 10, 9)
)

var metricDefs = [numMetrics]metricDef{
	{"istio_requests_total", "Requests handled by the waypoint.", istioLabels, nil},
	{"istio_request_duration_milliseconds", "Request duration in milliseconds.", istioLabels, durationBuckets},
	{"istio_request_bytes", "Request size (headers and body) in bytes.", istioLabels, byteBuckets},
	{"istio_response_bytes", "Response size (headers and body) in bytes.", istioLabels, byteBuckets},
	{"istio_tcp_connections_opened_total", "TCP connections forwarded by the waypoint (L4 fallback).", tcpLabels, nil},
	{"istio_tcp_connections_closed_total", "TCP connections closed by the waypoint (L4 fallback).", tcpLabels, nil},
	{"istio_tcp_sent_bytes_total", "Bytes sent to the client on forwarded TCP connections.", tcpLabels, nil},
	{"istio_tcp_received_bytes_total", "Bytes received from the client on forwarded TCP connections.", tcpLabels, nil},
}

// maxCustomSeries bounds the label combinations of one metric set that
// carry values from tagOverrides expressions (a header, a path): past it,
// new combinations have those values replaced by "other", so a client
// cannot grow the proxy's memory and the scrape without end.
const maxCustomSeries = 10000

// otherValue stands for an expression's value once maxCustomSeries is hit.
const otherValue = "other"

// metrics are the waypoint's Prometheus metrics: Istio's standard ones, laid
// out by the Telemetry API's overrides (metricSet), and meshlet's own.
type metrics struct {
	reg       prometheus.Registerer // nil: none exported
	ejections *prometheus.CounterVec
	overflows *prometheus.CounterVec
	mu        sync.Mutex // serializes apply
	set       atomic.Pointer[metricSet]
	logf      func(format string, args ...any) // Options.Logf; nil: quiet
	// reporter is the reporter label; self, when set, is the proxy as the
	// source of what it reports (Options.Self).
	reporter string
	self     *Peer
	cluster  string // Options.ClusterID
}

// newMetrics registers the proxy's metrics with reg (nil: none), reported
// as reporter ("" means "waypoint"); self, when set, stands in the source_*
// labels (Options.Self).
func newMetrics(reg prometheus.Registerer, reporter string, self *Peer, cluster string) (*metrics, error) {
	if reporter == "" {
		reporter = "waypoint"
	}
	m := &metrics{
		reg: reg, reporter: reporter, self: self, cluster: cluster,
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_waypoint_outlier_ejections_total", Help: "Endpoints ejected by outlier detection.",
		}, []string{"cluster"}),
		overflows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_waypoint_upstream_overflow_total", Help: "Requests refused by a full connection pool, or not retried over a retry limit or budget (UO).",
		}, []string{"cluster"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.ejections, m.overflows, istioCollector{m}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, m.apply(nil)
}

// istioCollector exports the Istio metrics of the current metric set. It is
// an unchecked collector (it describes nothing): a registry keeps a metric
// name's label names for the life of the process once a collector
// describes them, and overrides change them at run time.
type istioCollector struct{ m *metrics }

func (istioCollector) Describe(chan<- *prometheus.Desc) {}

func (c istioCollector) Collect(ch chan<- prometheus.Metric) {
	set := c.m.set.Load()
	if set == nil {
		return
	}
	for _, v := range set.vecs {
		if v != nil {
			v.collector().Collect(ch)
		}
	}
}

// metricSet is one layout of the Istio metrics: which ones are exported and
// with which labels, from one config's overrides.
type metricSet struct {
	overrides map[string]model.MetricOverride
	vecs      [numMetrics]*metricVec // nil: not exported
	// httpExprs and tcpExprs are the distinct tagOverrides expressions of
	// the request metrics and of the TCP ones, evaluated once per request
	// or connection.
	httpExprs, tcpExprs []*logfilter.Value
	cache               atomic.Pointer[map[seriesKey]*series] // see seriesFor
	cacheMu             sync.Mutex                            // guards dirty and misses
	dirty               map[seriesKey]*series                 // entries not yet in cache
	misses              int                                   // dirty hits since the last promotion
	tcpCustom           map[string]bool                       // custom TCP values seen, bounded
	tcpMu               sync.Mutex
	warnOnce            sync.Once
	logf                func(format string, args ...any)
	reporter            string
	cluster             string
}

// metricVec is one exported metric.
type metricVec struct {
	counter *prometheus.CounterVec
	hist    *prometheus.HistogramVec
	// src is, per label, where its value comes from: i >= 0 the standard
	// value i (in metricDefs' labels order), -1-j expression j's.
	src    []int
	names  []string // the label names
	layout string   // the label names and their sources, equal layouts share the vec
}

func (v *metricVec) collector() prometheus.Collector {
	if v.hist != nil {
		return v.hist
	}
	return v.counter
}

func (v *metricVec) values(std, custom []string) []string {
	out := make([]string, len(v.src))
	for i, s := range v.src {
		if s >= 0 {
			out[i] = std[s]
		} else {
			out[i] = custom[-1-s]
		}
	}
	return out
}

// newMetricVec lays out metric i with its override o; expressions are
// added to exprs (shared by the metrics of one kind) as they first appear.
// The Prometheus vector is made by export, once the layout is known new.
func newMetricVec(i int, o model.MetricOverride, exprs *[]*logfilter.Value, index map[string]int) (*metricVec, error) {
	def := &metricDefs[i]
	var names []string
	v := &metricVec{}
	exprOf := func(tag, expr string) (int, error) {
		if j, ok := index[expr]; ok {
			return j, nil
		}
		e, err := logfilter.CompileValue(expr)
		if err != nil {
			return 0, fmt.Errorf("metric %s: tag %s: %w", model.IstioMetrics[i], tag, err)
		}
		*exprs = append(*exprs, e)
		index[expr] = len(*exprs) - 1
		return len(*exprs) - 1, nil
	}
	for k, name := range def.labels {
		t, ok := o.Tags[name]
		switch {
		case !ok:
			names, v.src = append(names, name), append(v.src, k)
		case t.Remove:
		default:
			j, err := exprOf(name, t.Value)
			if err != nil {
				return nil, err
			}
			names, v.src = append(names, name), append(v.src, -1-j)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(o.Tags)) {
		t := o.Tags[name]
		if t.Remove || slices.Contains(def.labels, name) {
			continue
		}
		j, err := exprOf(name, t.Value)
		if err != nil {
			return nil, err
		}
		names, v.src = append(names, name), append(v.src, -1-j)
	}
	var b strings.Builder
	for k, name := range names {
		b.WriteString(name)
		b.WriteByte('=')
		if s := v.src[k]; s >= 0 {
			b.WriteString(strconv.Itoa(s))
		} else {
			b.WriteString((*exprs)[-1-s].String())
		}
		b.WriteByte(0)
	}
	v.layout, v.names = b.String(), names
	return v, nil
}

// export makes v's Prometheus vector for metric i.
func (v *metricVec) export(i int) {
	def := &metricDefs[i]
	if def.buckets != nil {
		v.hist = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: def.name, Help: def.help, Buckets: def.buckets}, v.names)
	} else {
		v.counter = prometheus.NewCounterVec(prometheus.CounterOpts{Name: def.name, Help: def.help}, v.names)
	}
}

// apply lays the Istio metrics out by a config's overrides. A metric whose
// layout does not change keeps its series; one that does is exported anew
// (its old series go, as when a proxy restarts with other labels). An
// error (an expression that does not compile) leaves the metrics as they
// were. The istioCollector exports whichever set is current.
func (m *metrics) apply(overrides map[string]model.MetricOverride) error {
	if m == nil || m.reg == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.set.Load()
	if old != nil && maps.EqualFunc(old.overrides, overrides, sameOverride) {
		return nil
	}
	next := &metricSet{overrides: overrides, logf: m.logf, reporter: m.reporter, cluster: m.cluster}
	httpIndex, tcpIndex := map[string]int{}, map[string]int{}
	for i := range numMetrics {
		o := overrides[model.IstioMetrics[i]]
		if o.Disabled {
			continue
		}
		exprs, index := &next.httpExprs, httpIndex
		if i >= tcpOpened {
			exprs, index = &next.tcpExprs, tcpIndex
		}
		v, err := newMetricVec(i, o, exprs, index)
		if err != nil {
			return err
		}
		if old != nil && old.vecs[i] != nil && old.vecs[i].layout == v.layout {
			// The same labels from the same sources: the series go on.
			// The sources' indexes are this set's (its expressions may
			// be numbered otherwise than the last set's).
			v.counter, v.hist = old.vecs[i].counter, old.vecs[i].hist
		} else {
			v.export(i)
		}
		next.vecs[i] = v
	}
	m.set.Store(next)
	return nil
}

func sameOverride(a, b model.MetricOverride) bool {
	return a.Disabled == b.Disabled && maps.Equal(a.Tags, b.Tags)
}

// observe records a request in the Istio request metrics. It returns the
// request's attributes when the overrides needed them (nil otherwise), for
// the access log filter to reuse.
func (m *metrics) observe(rec *record, req *http.Request, hdr *reqFields, w *responseWriter) *logfilter.Attributes {
	if m == nil {
		return nil
	}
	set := m.set.Load()
	if set == nil {
		return nil
	}
	p := &rec.peer
	if m.self != nil {
		p = m.self
	}
	k := seriesKey{
		srcWorkload: p.Workload, srcNamespace: p.Namespace, srcPrincipal: p.Principal,
		dest: rec.dest, grpc: rec.grpcStatus != "",
		code: rec.code, grpcStatus: rec.grpcStatus, flags: rec.flagString(),
	}
	if p.Labels != nil {
		k.srcApp, k.srcVersion = p.Labels["app"], p.Labels["version"]
		k.srcCanonName, k.srcCanonRev = p.Labels["service.istio.io/canonical-name"], p.Labels["service.istio.io/canonical-revision"]
	}
	var attrs *logfilter.Attributes
	if len(set.httpExprs) > 0 {
		attrs = logAttributes(rec, req, hdr, w)
		k.custom = evalAll(set.httpExprs, attrs)
	}
	s := set.seriesFor(&k)
	ms := float64(time.Since(rec.start).Microseconds()) / 1000
	if s.requests != nil {
		s.requests.Inc()
	}
	if s.duration != nil {
		s.duration.Observe(ms)
	}
	if s.reqBytes != nil {
		s.reqBytes.Observe(float64(rec.bytesIn))
	}
	if s.respBytes != nil {
		s.respBytes.Observe(float64(rec.bytesOut))
	}
	return attrs
}

// evalAll joins the expressions' values for a with NUL, which a value
// cannot hold unnoticed: it only separates.
func evalAll(exprs []*logfilter.Value, a *logfilter.Attributes) string {
	var b strings.Builder
	for i, e := range exprs {
		if i > 0 {
			b.WriteByte(0)
		}
		b.WriteString(strings.ReplaceAll(e.Eval(a), "\x00", ""))
	}
	return b.String()
}

// otherCustom is the custom part of a key past maxCustomSeries.
func otherCustom(n int) string {
	return strings.Repeat(otherValue+"\x00", n-1) + otherValue
}

// seriesKey is what a request's Istio label values are made of: the same
// key always yields the same values, so it stands for them in the cache
// without building the 25 strings per request.
type seriesKey struct {
	srcWorkload, srcNamespace, srcPrincipal       string
	srcApp, srcVersion, srcCanonName, srcCanonRev string
	dest                                          destInfo
	grpc                                          bool
	code                                          int
	grpcStatus, flags                             string
	custom                                        string // the tagOverrides expressions' values, NUL-separated
}

// labelValues are the key's values in istioLabels order.
func (k *seriesKey) labelValues(reporter, cluster string) []string {
	d := k.dest
	security := "none"
	if k.srcPrincipal != "" {
		security = "mutual_tls"
	}
	protocol := "http"
	if k.grpc {
		protocol = "grpc"
	}
	return []string{
		reporter,
		orUnknown(k.srcWorkload), orUnknown(k.srcNamespace), orUnknown(spiffeURI(k.srcPrincipal)),
		orUnknown(k.srcApp), orUnknown(k.srcVersion),
		orUnknown(k.srcCanonName), orUnknown(k.srcCanonRev), inCluster(k.srcWorkload, cluster),
		orUnknown(d.workload), orUnknown(d.namespace), orUnknown(spiffeURI(d.principal)), orUnknown(d.app), orUnknown(d.version),
		orUnknown(d.service), orUnknown(d.name), orUnknown(d.namespace),
		orUnknown(d.app), orUnknown(d.version), inCluster(d.workload, cluster),
		protocol, strconv.Itoa(k.code), k.grpcStatus, k.flags, security,
	}
}

// series are one label combination's request metrics (nil: not exported),
// cached so that a request costs one map lookup instead of four label
// hashings.
type series struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
}

// seriesFor returns the cached series of k. A hit in the read map takes
// no lock: it is immutable, replaced by a copy that takes in the newer
// entries (kept under the lock meanwhile) once there are enough of them or
// they have been looked up often enough, so that label combinations
// appearing one after another (tagOverrides values) cost amortized
// constant time, not a copy each.
func (set *metricSet) seriesFor(k *seriesKey) *series {
	if c := set.cache.Load(); c != nil {
		if s, ok := (*c)[*k]; ok {
			return s
		}
	}
	set.cacheMu.Lock()
	defer set.cacheMu.Unlock()
	read := mapOrNil(set.cache.Load())
	if s, ok := read[*k]; ok {
		return s
	}
	if s, ok := set.dirty[*k]; ok {
		set.misses++
		set.promote(read)
		return s
	}
	if k.custom != "" && len(read)+len(set.dirty) >= maxCustomSeries {
		set.warnOnce.Do(func() {
			if set.logf != nil {
				set.logf("waypoint: more than %d label combinations with tagOverrides values; new values are labelled %q", maxCustomSeries, otherValue)
			}
		})
		k.custom = otherCustom(len(set.httpExprs))
		if s, ok := read[*k]; ok {
			return s
		}
		if s, ok := set.dirty[*k]; ok {
			return s
		}
	}
	std := k.labelValues(set.reporter, set.cluster)
	var custom []string
	if len(set.httpExprs) > 0 {
		custom = strings.Split(k.custom, "\x00")
	}
	s := &series{}
	if v := set.vecs[requestCount]; v != nil {
		s.requests = v.counter.WithLabelValues(v.values(std, custom)...)
	}
	if v := set.vecs[requestDuration]; v != nil {
		s.duration = v.hist.WithLabelValues(v.values(std, custom)...)
	}
	if v := set.vecs[requestSize]; v != nil {
		s.reqBytes = v.hist.WithLabelValues(v.values(std, custom)...)
	}
	if v := set.vecs[responseSize]; v != nil {
		s.respBytes = v.hist.WithLabelValues(v.values(std, custom)...)
	}
	if set.dirty == nil {
		set.dirty = map[seriesKey]*series{}
	}
	set.dirty[*k] = s
	set.promote(read)
	return s
}

// promote makes the read map take in the dirty entries once they are a
// quarter of it (or 16) or have been looked up 64 times under the lock.
func (set *metricSet) promote(read map[seriesKey]*series) {
	if len(set.dirty) < max(16, len(read)/4) && set.misses < 64 {
		return
	}
	next := make(map[seriesKey]*series, len(read)+len(set.dirty))
	maps.Copy(next, read)
	maps.Copy(next, set.dirty)
	set.cache.Store(&next)
	set.dirty, set.misses = nil, 0
}

func mapOrNil(m *map[seriesKey]*series) map[seriesKey]*series {
	if m == nil {
		return nil
	}
	return *m
}

// tcpCounters are one forwarded connection's TCP metrics; nil ones are not
// exported.
type tcpCounters struct {
	opened, closed, sent, received prometheus.Counter
}

// tcpLabelValues are the TCP metric label values for one connection.
func tcpLabelValues(reporter string, p Peer, d destInfo, flags string) []string {
	security := "none"
	if p.Principal != "" {
		security = "mutual_tls"
	}
	return []string{reporter, orUnknown(p.Workload), orUnknown(p.Namespace), orUnknown(spiffeURI(p.Principal)),
		orUnknown(d.service), orUnknown(d.name), orUnknown(d.namespace), flags, security}
}

// tcp returns the counters of a connection from p to d; attrs gives its
// attributes for tagOverrides expressions, called only when there are some.
func (m *metrics) tcp(p Peer, d destInfo, attrs func() *logfilter.Attributes) tcpCounters {
	var c tcpCounters
	if m == nil {
		return c
	}
	set := m.set.Load()
	if set == nil {
		return c
	}
	if m.self != nil {
		p = *m.self
	}
	std := tcpLabelValues(set.reporter, p, d, flagNone)
	var custom []string
	if len(set.tcpExprs) > 0 {
		joined := evalAll(set.tcpExprs, attrs())
		set.tcpMu.Lock()
		if !set.tcpCustom[joined] {
			if len(set.tcpCustom) >= maxCustomSeries {
				joined = otherCustom(len(set.tcpExprs))
			} else {
				if set.tcpCustom == nil {
					set.tcpCustom = map[string]bool{}
				}
				set.tcpCustom[joined] = true
			}
		}
		set.tcpMu.Unlock()
		custom = strings.Split(joined, "\x00")
	}
	for i, dst := range []*prometheus.Counter{&c.opened, &c.closed, &c.sent, &c.received} {
		if v := set.vecs[tcpOpened+i]; v != nil {
			*dst = v.counter.WithLabelValues(v.values(std, custom)...)
		}
	}
	return c
}

// inCluster is the source_cluster or destination_cluster of a workload: the
// proxy's cluster when the workload is known (one of the mesh's), else
// "unknown", as Istio labels them.
func inCluster(workload, cluster string) string {
	if workload == "" || cluster == "" {
		return "unknown"
	}
	return cluster
}
