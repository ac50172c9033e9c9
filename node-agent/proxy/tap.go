package proxy

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/tap"
)

// Tap is the hub of a node agent's connection events (pkg/tap: bounded,
// never blocking), served at configdump.TapPath on its admin port by
// TapHandler. An event carries who, where, the verdict and the counts,
// never a byte of payload.
type Tap = tap.Hub[configdump.ConnEvent]

// connInfo is what an event site knows of a connection; an event is made
// of it only while someone taps.
type connInfo struct {
	connLabels
	// srcAddr is the client's address; dstAddr the address connected to
	// (the endpoint, else what the client dialled).
	srcAddr, dstAddr netip.AddrPort
	// policy is the AuthorizationPolicy that decided, if one did.
	policy string
}

// tapping says whether anyone taps: the one atomic load an event site pays
// while nobody does.
func (p *Proxy) tapping() bool { return p.opts.Tap != nil && p.opts.Tap.Active() }

// tapOpened publishes c's opening while someone taps, and returns when it
// opened, for its closing's duration. The time is taken whether or not
// anyone taps (a clock read, no allocation, against the connection's
// syscalls), so that a tap begun while the connection is open still shows
// how long it lasted when it closes.
func (p *Proxy) tapOpened(c *connInfo) time.Time {
	now := time.Now()
	if p.tapping() {
		p.opts.Tap.Publish(c.event(configdump.ConnOpened, now))
	}
	return now
}

// tapClosed publishes c's closing, with the bytes it carried each way,
// while someone taps.
func (p *Proxy) tapClosed(c *connInfo, opened time.Time, b byteCounts) {
	if p.tapping() {
		p.publishClosed(c, opened, b)
	}
}

func (p *Proxy) publishClosed(c *connInfo, opened time.Time, b byteCounts) {
	now := time.Now()
	e := c.event(configdump.ConnClosed, now)
	e.ReceivedBytes, e.SentBytes = b.received, b.sent
	if !opened.IsZero() {
		e.DurationMS = float64(now.Sub(opened).Microseconds()) / 1000
	}
	p.opts.Tap.Publish(e)
}

// refuse counts c's refusal by reason and publishes it while someone taps;
// detail says why in words, and is only asked then.
func (p *Proxy) refuse(c *connInfo, reason string, detail func() string) {
	p.opts.Metrics.refuse(c.reporter, c.dst, reason)
	if p.tapping() {
		e := c.event(configdump.ConnRefused, time.Now())
		e.Reason, e.Detail = reason, detail()
		p.opts.Tap.Publish(e)
	}
}

func (c *connInfo) event(kind string, now time.Time) configdump.ConnEvent {
	e := configdump.ConnEvent{
		Time: now.UTC(), Kind: kind, Reporter: c.reporter,
		Source: workloadName(c.src), SourceIdentity: c.src.Identity,
		Destination: workloadName(c.dst), DestinationService: c.service,
		ConnectionSecurityPolicy: "none", Policy: c.policy,
	}
	if c.mutualTLS {
		e.ConnectionSecurityPolicy = "mutual_tls"
	}
	if c.srcAddr.IsValid() {
		e.SourceAddr = c.srcAddr.String()
		if e.Source == "" {
			e.Source = c.srcAddr.Addr().String()
		}
	}
	if c.dstAddr.IsValid() {
		e.DestinationAddr = c.dstAddr.String()
	}
	return e
}

func workloadName(w Workload) string {
	if w.Name == "" {
		return ""
	}
	return w.Namespace + "/" + w.Name
}

// TapHandler serves t at configdump.TapPath (pkg/tap's stream and bounds:
// query "max" and "seconds"), filtered by the query: "namespace" (either
// end's), "workload" (either end's, "namespace/name" or a name), "ip"
// (either end's address; repeated or comma-separated), "kind" (opened,
// closed, refused; comma-separated), "port" (the destination's) and
// "reporter" (source or destination). Empty selects all.
func TapHandler(t *Tap) http.Handler {
	return t.Handler(parseConnFilter)
}

// connFilter selects connection events; empty fields select all.
type connFilter struct {
	namespace, workload, reporter string
	ips                           []netip.Addr
	kinds                         []string
	port                          uint16
}

func parseConnFilter(q url.Values) (func(*configdump.ConnEvent) bool, error) {
	f := connFilter{namespace: q.Get("namespace"), workload: q.Get("workload"), reporter: q.Get("reporter")}
	if f.reporter != "" && f.reporter != "source" && f.reporter != "destination" {
		return nil, fmt.Errorf("reporter %q: want source or destination", f.reporter)
	}
	for _, v := range q["ip"] {
		for s := range strings.SplitSeq(v, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("ip %q: want an IP address", s)
			}
			f.ips = append(f.ips, a.Unmap())
		}
	}
	for _, v := range q["kind"] {
		for k := range strings.SplitSeq(v, ",") {
			if k != configdump.ConnOpened && k != configdump.ConnClosed && k != configdump.ConnRefused {
				return nil, fmt.Errorf("kind %q: want opened, closed or refused", k)
			}
			f.kinds = append(f.kinds, k)
		}
	}
	if v := q.Get("port"); v != "" {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("port %q: want 1 to 65535", v)
		}
		f.port = uint16(n)
	}
	return f.match, nil
}

func (f *connFilter) match(e *configdump.ConnEvent) bool {
	if f.reporter != "" && e.Reporter != f.reporter || len(f.kinds) > 0 && !slices.Contains(f.kinds, e.Kind) {
		return false
	}
	if f.namespace != "" && namespaceOf(e.Source) != f.namespace && namespaceOf(e.Destination) != f.namespace {
		return false
	}
	if f.workload != "" && !workloadIs(e.Source, f.workload) && !workloadIs(e.Destination, f.workload) {
		return false
	}
	dst, _ := netip.ParseAddrPort(e.DestinationAddr)
	if f.port != 0 && dst.Port() != f.port {
		return false
	}
	if len(f.ips) > 0 {
		src, _ := netip.ParseAddrPort(e.SourceAddr)
		if !slices.Contains(f.ips, src.Addr().Unmap()) && !slices.Contains(f.ips, dst.Addr().Unmap()) {
			return false
		}
	}
	return true
}

// namespaceOf is the namespace of a "namespace/name" workload; "" for an
// address.
func namespaceOf(w string) string {
	ns, _, ok := strings.Cut(w, "/")
	if !ok {
		return ""
	}
	return ns
}

// workloadIs says whether workload "namespace/name" is want: the same
// "namespace/name", or the same name.
func workloadIs(workload, want string) bool {
	if strings.Contains(want, "/") {
		return workload == want
	}
	_, name, ok := strings.Cut(workload, "/")
	return ok && name == want
}
