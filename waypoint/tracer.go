package waypoint

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/meshlet/meshlet/pkg/model"
)

// Tracers from the config (model.L7Telemetry.Tracer, an opentelemetry
// extension provider of the mesh config): the proxy runs one OTLP exporter
// per tracer spec, sending through the collector's cluster of whatever
// config is current. A push that keeps the spec keeps the exporter and its
// queue; one that changes or drops it starts the new one and lets the old
// one flush what it holds and stop.

// tracers are the proxy's running exporters, by spec.
type tracers struct {
	mu  sync.Mutex
	run map[string]*runningTracer
}

type runningTracer struct {
	exp  *OTLPExporter
	stop context.CancelFunc
	done chan struct{}
}

// tracerKey identifies a spec: the same key, the same exporter.
func tracerKey(t *model.Tracer) string {
	b, _ := json.Marshal(t) // a struct of strings, maps and numbers
	return string(b)
}

// use returns the exporter's Export for spec, starting the exporter when
// none runs for it. An exporter that cannot be made (a spec the config's
// validation let by but the exporter refuses) is reported, and its spans
// dropped: nil.
func (ts *tracers) use(p *Proxy, spec *model.Tracer) func(Span) {
	key := tracerKey(spec)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if rt, ok := ts.run[key]; ok {
		return rt.exp.Export
	}
	name := p.opts.SpanServiceName
	if spec.ServiceName != "" {
		name = spec.ServiceName
	}
	exp, err := NewOTLPExporter(OTLPOptions{
		Endpoint:    "http://" + spec.Authority,
		ServiceName: name,
		Resource:    p.opts.SpanResource,
		Client:      &http.Client{Transport: clusterTransport{p: p, cluster: spec.Cluster, h2: spec.HTTPPath == ""}},
		GRPC:        spec.HTTPPath == "",
		Zipkin:      spec.Zipkin,
		Path:        spec.HTTPPath,
		Headers:     spec.Headers,
		Timeout:     spec.Timeout,
		Logf:        p.logf,
	})
	if err != nil {
		p.logf("waypoint: tracer %q: %v; spans are not exported", spec.Provider, err)
		return nil
	}
	ctx, stop := context.WithCancel(context.Background())
	rt := &runningTracer{exp: exp, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(rt.done)
		_ = exp.Run(ctx)
	}()
	if ts.run == nil {
		ts.run = map[string]*runningTracer{}
	}
	ts.run[key] = rt
	return exp.Export
}

// keepOnly stops every exporter but spec's (none when spec is nil): each
// flushes what it holds (bounded) on its way out.
func (ts *tracers) keepOnly(spec *model.Tracer) {
	key := ""
	if spec != nil {
		key = tracerKey(spec)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for k, rt := range ts.run {
		if k != key {
			rt.stop()
			delete(ts.run, k)
		}
	}
}

// close stops every exporter and waits for their last flush.
func (ts *tracers) close() {
	ts.mu.Lock()
	run := ts.run
	ts.run = nil
	ts.mu.Unlock()
	for _, rt := range run {
		rt.stop()
	}
	for _, rt := range run {
		<-rt.done
	}
}

// clusterTransport sends a request to an endpoint of one cluster of the
// proxy's current config (sendVia).
type clusterTransport struct {
	p       *Proxy
	cluster string
	h2      bool
}

func (t clusterTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c := t.p.cfg.Load()
	cl := c.clusters[t.cluster]
	if cl == nil {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, fmt.Errorf("cluster %q is not in the proxy's config (the collector's service is not in the mesh)", t.cluster)
	}
	return sendVia(cl.all, r.Clone(r.Context()), t.h2)
}
