// Package dnsproxy is the node agent's DNS proxy: the eBPF data path sends
// an enrolled pod's UDP/53 queries to 127.0.0.1:15053 (and [::1]:15053)
// inside the pod's network namespace, where this proxy answers the names
// the mesh knows (Services and ServiceEntry hosts with addresses, which the
// cluster DNS may not know) from the pushed model and forwards every other
// query to the resolver the pod sent it to, returning its answer unchanged.
// That resolver is found from the query's source: sock_diag inside the pod
// names the sending socket, whose cookie the data path recorded the original
// destination under. The forward leaves from the pod's netns, as the query
// would have without the mesh, carrying the agent's mark so that it is not
// captured again. When the original resolver is not known (capture did not
// record it, the socket is gone, or the record points at the proxy itself)
// the query goes to the configured upstream (the cluster DNS) from the
// agent's netns.
//
// A mesh name with one of the pod's search domains appended, which the
// pod's resolver asks before the name itself (ndots:5), is answered at once
// with a CNAME to the mesh name and its addresses, as Istio's DNS proxy and
// ztunnel answer it; forwarded, it would come back NXDOMAIN, one search
// domain after another, before the mesh name is asked.
//
// DNS over TCP (dig +tcp, glibc's use-vc, a resolver retrying a truncated
// answer) is captured like any TCP: connect4 sends it to the outbound
// listener (15001), which hands a connection to port 53 to ServeTCP (see
// proxy.Options.DNS) instead of passing it through. ServeTCP answers the
// same names from the same code, with every address (up to a TCP message's
// 65535 bytes), and forwards the rest over TCP to the resolver the pod
// dialled, from the pod's netns with the agent's mark, one upstream
// connection per client connection. An answer over UDP is never truncated
// (TC): it fits what the client takes (512 bytes, or the size its EDNS0 OPT
// record advertises, up to 4096) and leaves out the addresses past that.
//
// It must not become an open resolver: it listens only on the pod's
// loopback, bounds message sizes, concurrency and time, and answers only
// well-formed queries.
package dnsproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshlet/meshlet/node-agent/poller"
)

// Port is where captured queries arrive inside the pod.
const Port = 15053

// maxMessage bounds a query, an answer forwarded over UDP and any answer
// from the mesh over UDP (EDNS0's common size).
const maxMessage = 4096

// maxTCPMessage is the most a DNS message over TCP holds (its length is a
// 16-bit prefix, RFC 1035 §4.2.2).
const maxTCPMessage = 65535

// minUDPMessage is what every client accepts over UDP (RFC 1035 §4.2.1):
// all a query without an EDNS0 OPT record may be answered with, and the
// floor of the size an OPT record advertises (RFC 6891 §6.2.5).
const minUDPMessage = 512

// rcodeBadVersion is EDNS0's BADVERS (RFC 6891 §9), an extended RCODE: its
// high bits travel in the OPT record, its low four (zero) in the header.
const rcodeBadVersion dnsmessage.RCode = 16

// Options configure one pod's proxy.
type Options struct {
	// Netns is the pod's network namespace path. Required.
	Netns string
	// Lookup returns the addresses the mesh has for a fully qualified name
	// (lower case, no trailing dot); ok is false for names the mesh does not
	// know, which are forwarded. Required.
	Lookup func(name string) (addrs []netip.Addr, ok bool)
	// Upstream returns the resolver to forward to when the pod's own is not
	// known (host:port, usually the cluster DNS Service); "" refuses such
	// queries with SERVFAIL. Required.
	Upstream func() string
	// OriginalDst returns the address the socket with the given cookie sent
	// its captured query to (ebpf.Datapath.SockOriginalDst); an error when
	// none is recorded. Nil forwards every query to Upstream.
	OriginalDst func(socketCookie uint64) (netip.AddrPort, error)
	// Mark is set on the proxy's sockets so the data path never captures
	// them (the agent's mark). Required with OriginalDst: queries forwarded
	// from the pod's netns would otherwise be captured again.
	Mark uint32
	// Timeout bounds one forwarded query, including finding its resolver;
	// zero means 5s.
	Timeout time.Duration
	// MaxInFlight bounds concurrent forwarded queries; zero means 128.
	// Queries beyond it are answered SERVFAIL at once.
	MaxInFlight int
	// SearchDomains are the pod's resolver search domains (such as
	// KubeSearchDomains gives; any case, trailing dot or not): a query for a
	// name the mesh does not know that is a mesh name with one of them
	// appended is answered with a CNAME to the mesh name followed by its
	// addresses. Nil answers exact mesh names only.
	SearchDomains []string
	// TTL is the TTL of answers from the mesh; zero means 5s.
	TTL time.Duration
	// IdleTimeout closes a DNS-over-TCP connection that has had no query
	// for this long and has none in flight; zero means 10s (as common
	// resolvers do).
	IdleTimeout time.Duration
	// MaxPipelined bounds the forwarded queries one TCP connection may
	// have unanswered; zero means 16. The connection is read no further
	// until one of them is answered.
	MaxPipelined int
	// Errorf reports problems; nil discards them.
	Errorf func(format string, args ...any)
	// Poller reads the queries. Nil means poller.Shared().
	Poller *poller.Poller
}

// Server is one pod's DNS proxy.
type Server struct {
	opts    Options
	conns   []net.PacketConn
	watches []*poller.Watch
	finder  *sockFinder // nil without Options.OriginalDst
	sem     chan struct{}
	wg      sync.WaitGroup // queries in flight and TCP connections served
	warned  atomic.Bool    // a failed sender lookup was reported

	mu     sync.Mutex
	closed bool                  // Close was called: ServeTCP serves no more
	tcp    map[net.Conn]struct{} // the TCP connections ServeTCP serves
}

// Start listens on the pod's loopback port 15053 (IPv4, and IPv6 when the
// pod has it) with SO_REUSEPORT, so a new agent can take over during a
// rolling update, and serves until Close.
func Start(opts Options) (*Server, error) {
	if opts.Netns == "" || opts.Lookup == nil || opts.Upstream == nil {
		return nil, errors.New("dns proxy: Netns, Lookup and Upstream are required")
	}
	if opts.OriginalDst != nil && opts.Mark == 0 {
		return nil, errors.New("dns proxy: OriginalDst needs Mark: forwards from the pod would be captured again")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 128
	}
	if opts.TTL <= 0 {
		opts.TTL = 5 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 10 * time.Second
	}
	if opts.MaxPipelined <= 0 {
		opts.MaxPipelined = 16
	}
	if opts.Errorf == nil {
		opts.Errorf = func(string, ...any) {}
	}
	opts.SearchDomains = searchDomains(opts.SearchDomains)
	s := &Server{opts: opts, sem: make(chan struct{}, opts.MaxInFlight), tcp: map[net.Conn]struct{}{}}
	for _, addr := range []string{"127.0.0.1", "::1"} {
		pc, err := listenUDP(opts.Netns, net.JoinHostPort(addr, fmt.Sprint(Port)), opts.Mark)
		if err != nil {
			if addr == "::1" {
				continue // no IPv6 loopback in this pod
			}
			s.Close()
			return nil, fmt.Errorf("dns proxy for %s: %w", opts.Netns, err)
		}
		s.conns = append(s.conns, pc)
	}
	if opts.OriginalDst != nil {
		f, err := openSockFinder(opts.Netns, opts.Timeout)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("dns proxy for %s: %w", opts.Netns, err)
		}
		s.finder = f
	}
	pl := opts.Poller
	if pl == nil {
		var err error
		if pl, err = poller.Shared(); err != nil {
			s.Close()
			return nil, fmt.Errorf("dns proxy for %s: %w", opts.Netns, err)
		}
	}
	for _, pc := range s.conns {
		// No goroutine waits on the socket: the poller calls serve when
		// queries are there.
		w, err := pl.Watch(pc.(syscall.Conn), func(w *poller.Watch) bool { return s.serve(pc, w) })
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("dns proxy for %s: %w", opts.Netns, err)
		}
		s.watches = append(s.watches, w)
	}
	return s, nil
}

// Close stops serving, closes the TCP connections ServeTCP serves and waits
// for queries in flight.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.tcp {
		c.Close()
	}
	s.mu.Unlock()
	for _, w := range s.watches {
		w.Stop()
	}
	var err error
	for _, pc := range s.conns {
		err = errors.Join(err, pc.Close())
	}
	s.wg.Wait()
	if s.finder != nil {
		err = errors.Join(err, s.finder.Close())
	}
	return err
}

// readBatch bounds the queries read from one socket per wake-up, so that
// one busy pod does not hold up the others.
const readBatch = 64

var bufPool = sync.Pool{New: func() any { return new([maxMessage]byte) }}

// serve answers or forwards the queries waiting on pc. The poller calls it
// on its goroutine when pc is readable; it reads without blocking, answers
// what the mesh knows at once and forwards the rest on goroutines of their
// own. It returns false when pc is closed.
func (s *Server) serve(pc net.PacketConn, w *poller.Watch) bool {
	bp := bufPool.Get().(*[maxMessage]byte)
	defer bufPool.Put(bp)
	buf := bp[:]
	for range readBatch {
		n, src, err := recvFrom(w, buf)
		switch {
		case errors.Is(err, net.ErrClosed):
			return false
		case errors.Is(err, errDrained):
			return true
		case err != nil:
			s.opts.Errorf("dns proxy: read: %v", err)
			return true
		}
		from := net.UDPAddrFromAddrPort(src)
		q := append([]byte(nil), buf[:n]...)
		if !wellFormed(q) {
			continue // never passed on, never answered
		}
		if answer, ok := s.local(q, overUDP); ok {
			_, _ = pc.WriteTo(answer, from)
			continue
		}
		select {
		case s.sem <- struct{}{}:
		default:
			if a, ok := servfail(q); ok {
				_, _ = pc.WriteTo(a, from)
			}
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			a, err := s.forward(q, from)
			if err != nil {
				s.opts.Errorf("dns proxy: forward: %v", err)
				var ok bool
				if a, ok = servfail(q); !ok {
					return
				}
			}
			_, _ = pc.WriteTo(a, from)
		}()
	}
	return true
}

// transport is how a query came, which bounds the answer's size.
type transport int

const (
	overUDP transport = iota // what the client takes over UDP
	overTCP                  // up to maxTCPMessage
)

// local answers a query for a name the mesh knows, or for a search-domain
// expansion of one, with an answer sized for the transport the query came
// over. ok is false when the query is to be forwarded (or is malformed: the
// upstream judges it).
func (s *Server) local(q []byte, tr transport) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response || h.OpCode != 0 {
		return nil, false
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return nil, false
	}
	question := qs[0]
	if question.Class != dnsmessage.ClassINET || (question.Type != dnsmessage.TypeA && question.Type != dnsmessage.TypeAAAA) {
		return nil, false
	}
	opt, ednsErr := queryEDNS(&p)
	name := strings.TrimSuffix(strings.ToLower(question.Name.String()), ".")
	target := "" // the mesh name name expands, when name is not one itself
	addrs, known := s.opts.Lookup(name)
	if !known {
		if target, addrs, known = s.expansion(name); !known {
			return nil, false
		}
	}
	var records []netip.Addr // of the family asked for
	for _, a := range addrs {
		if question.Type == dnsmessage.TypeA && a.Is4() || question.Type == dnsmessage.TypeAAAA && a.Is6() && !a.Is4In6() {
			records = append(records, a)
		}
	}
	// The proxy answers this name, so it judges the query's EDNS0 as a
	// resolver would (RFC 6891 §6.1.1, §6.1.3); for a forwarded name the
	// upstream does.
	switch {
	case ednsErr != nil:
		out, err := s.answer(h, question, dnsmessage.RCodeFormatError, "", nil, 0)
		return out, err == nil
	case opt.present && opt.version != 0:
		out, err := s.answer(h, question, rcodeBadVersion, "", nil, opt.limit())
		return out, err == nil
	}
	// Over UDP the answer fits what the client takes (512 bytes, or the
	// size its OPT record advertises, at most maxMessage): the addresses
	// past it are left out. TC is not set, as before TCP was answered: a
	// client uses the addresses it got (one that wants them all asks over
	// TCP). Over TCP the answer holds every address up to a TCP message's
	// 65535 bytes; its OPT record still advertises the UDP size the query
	// did (RFC 6891 §6.2.3).
	limit, optSize := opt.limit(), 0
	if opt.present {
		optSize = limit // an EDNS0 client is answered with an OPT record
	}
	if tr == overTCP {
		limit = maxTCPMessage
	}
	for {
		out, err := s.answer(h, question, dnsmessage.RCodeSuccess, target, records, optSize)
		if err != nil {
			return nil, false
		}
		if len(out) <= limit {
			return out, true
		}
		if len(records) == 0 {
			return nil, false
		}
		per := 16 // a compressed A record; loops again if the guess is short
		if question.Type == dnsmessage.TypeAAAA {
			per = 28
		}
		records = records[:max(0, len(records)-(len(out)-limit+per-1)/per)]
	}
}

// edns is what a query's EDNS0 OPT record says.
type edns struct {
	present bool  // the query has an OPT record
	size    int   // the UDP payload size it advertises
	version uint8 // its EDNS version
}

// limit is the size of the largest answer the client takes over UDP.
func (e edns) limit() int {
	if !e.present {
		return minUDPMessage
	}
	return min(max(e.size, minUDPMessage), maxMessage)
}

// queryEDNS reads the OPT record from the sections of a query past its
// questions, where p stands. An error means a query RFC 6891 §6.1.1 calls
// malformed — more than one OPT record, one not owned by the root — or a
// record that does not parse; such a query is answered FORMERR.
func queryEDNS(p *dnsmessage.Parser) (edns, error) {
	if err := p.SkipAllAnswers(); err != nil {
		return edns{}, err
	}
	if err := p.SkipAllAuthorities(); err != nil {
		return edns{}, err
	}
	var e edns
	for {
		rh, err := p.AdditionalHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return e, nil
		}
		if err != nil {
			return edns{}, err
		}
		if rh.Type == dnsmessage.TypeOPT {
			if e.present {
				return edns{}, errors.New("more than one OPT record")
			}
			if rh.Name.String() != "." {
				return edns{}, fmt.Errorf("OPT record owned by %s, not the root", rh.Name)
			}
			e = edns{present: true, size: int(rh.Class), version: uint8(rh.TTL >> 16)}
		}
		if err := p.SkipAdditional(); err != nil {
			return edns{}, err
		}
	}
}

// expansion finds the mesh name that name is a search-domain expansion of:
// the name with one of the pod's search domains, the longest first, cut
// off. ok is false when there is none.
func (s *Server) expansion(name string) (host string, addrs []netip.Addr, ok bool) {
	for _, d := range s.opts.SearchDomains {
		h, found := strings.CutSuffix(name, "."+d)
		if !found || h == "" {
			continue
		}
		if addrs, ok = s.opts.Lookup(h); ok {
			return h, addrs, true
		}
	}
	return "", nil, false
}

// answer builds the answer to the query with header h and the question,
// with rcode: a CNAME from the name asked to target unless target is "",
// then an A or AAAA record for each of records, under target or else the
// name asked, then an OPT record advertising optSize unless it is 0.
func (s *Server) answer(h dnsmessage.Header, question dnsmessage.Question, rcode dnsmessage.RCode, target string, records []netip.Addr, optSize int) ([]byte, error) {
	b := dnsmessage.NewBuilder(make([]byte, 0, minUDPMessage), dnsmessage.Header{
		ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true,
		RCode: rcode & 0xF, // the rest of an extended RCODE is in the OPT record
	})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(question); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	rh := dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: uint32(s.opts.TTL / time.Second)}
	if target != "" {
		t, err := dnsmessage.NewName(target + ".")
		if err != nil {
			return nil, err
		}
		if err := b.CNAMEResource(rh, dnsmessage.CNAMEResource{CNAME: t}); err != nil {
			return nil, err
		}
		rh.Name = t
	}
	for _, a := range records {
		var err error
		if a.Is4() {
			err = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
		} else {
			err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			return nil, err
		}
	}
	if optSize > 0 {
		if err := b.StartAdditionals(); err != nil {
			return nil, err
		}
		var oh dnsmessage.ResourceHeader
		if err := oh.SetEDNS0(optSize, rcode, false); err != nil {
			return nil, err
		}
		if err := b.OPTResource(oh, dnsmessage.OPTResource{}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// KubeSearchDomains returns the search domains the kubelet gives a pod of
// namespace in a cluster whose DNS domain is clusterDomain (dnsPolicy
// ClusterFirst), most specific first.
func KubeSearchDomains(namespace, clusterDomain string) []string {
	return []string{namespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}
}

// searchDomains returns domains in lower case without dots at either end,
// empty ones dropped, the longest first.
func searchDomains(domains []string) []string {
	var out []string
	for _, d := range domains {
		if d = strings.Trim(strings.ToLower(d), "."); d != "" {
			out = append(out, d)
		}
	}
	slices.SortStableFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// forward sends q, which came from the pod's address from, to the
// resolver the pod sent it to (from the pod's netns) or else to the
// upstream (from the agent's), and returns the answer as is.
func (s *Server) forward(q []byte, from net.Addr) ([]byte, error) {
	deadline := time.Now().Add(s.opts.Timeout)
	var (
		c   net.Conn
		err error
	)
	if orig, ok := s.originalDst(from); ok {
		c, err = dialUDP(s.opts.Netns, orig, s.opts.Mark)
	} else {
		up := s.opts.Upstream()
		if up == "" {
			return nil, errors.New("no upstream resolver known")
		}
		c, err = net.DialTimeout("udp", up, time.Until(deadline))
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, maxMessage)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		// Only the answer to this query (same ID) is passed back.
		if n >= 2 && buf[0] == q[0] && buf[1] == q[1] {
			return buf[:n], nil
		}
	}
}

// originalDst returns the resolver the pod sent the query from from to, when
// the data path recorded one that is safe to forward to.
func (s *Server) originalDst(from net.Addr) (netip.AddrPort, bool) {
	if s.finder == nil {
		return netip.AddrPort{}, false
	}
	ua, ok := from.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	cookie, err := s.finder.cookie(ua.AddrPort())
	if err != nil {
		if !errors.Is(err, errNoSender) && s.warned.CompareAndSwap(false, true) {
			s.opts.Errorf("dns proxy: find the sender of a query in %s (forwarding to the upstream instead; reported once): %v", s.opts.Netns, err)
		}
		return netip.AddrPort{}, false
	}
	orig, err := s.opts.OriginalDst(cookie)
	if err != nil || !forwardable(orig) {
		return netip.AddrPort{}, false
	}
	return orig, true
}

// forwardable reports whether a recorded original destination may be
// forwarded to: not the proxy itself or anything on the pod's loopback
// (which capture never records), not a wildcard.
func forwardable(orig netip.AddrPort) bool {
	a := orig.Addr().Unmap()
	return a.IsValid() && !a.IsUnspecified() && !a.IsLoopback() && orig.Port() != 0 && orig.Port() != Port
}

// wellFormed reports whether q is a standard query with at least one
// parseable question (what the upstream may see).
func wellFormed(q []byte) bool {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return false
	}
	qs, err := p.AllQuestions()
	return err == nil && len(qs) > 0
}

// servfail builds a SERVFAIL answer to q; ok is false for a malformed q.
func servfail(q []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil, false
	}
	qs, err := p.AllQuestions()
	if err != nil {
		return nil, false
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeServerFailure, RecursionDesired: h.RecursionDesired})
	if b.StartQuestions() != nil {
		return nil, false
	}
	for _, q := range qs {
		if b.Question(q) != nil {
			return nil, false
		}
	}
	out, err := b.Finish()
	return out, err == nil
}
