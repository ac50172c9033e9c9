package dnsproxy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// FuzzLocalAnswer: whatever a pod sends to the DNS proxy, the proxy neither
// fails nor answers what it must not. A query that is not well formed is
// never answered or passed on; a well-formed one the proxy answers itself
// gets an answer that parses, carries the query's ID and question, is
// bounded by what the transport and the query's EDNS0 allow, and holds only
// addresses the mesh has for the name asked (or for the mesh name a search
// expansion of it stands for), of the family asked; and any well-formed
// query can be answered SERVFAIL.
func FuzzLocalAnswer(f *testing.F) {
	mesh := map[string][]netip.Addr{
		"web.shop.svc.cluster.local": {netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")},
		"api.example.com":            {netip.MustParseAddr("240.240.0.1")},
	}
	for i := range 200 {
		mesh["many.example.com"] = append(mesh["many.example.com"], netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	s := &Server{opts: Options{
		Lookup:        func(name string) ([]netip.Addr, bool) { a, ok := mesh[name]; return a, ok },
		TTL:           30 * time.Second,
		SearchDomains: KubeSearchDomains("shop", "cluster.local"),
	}}
	query := func(name string, t dnsmessage.Type, opt bool, size int) []byte {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x1234, RecursionDesired: true})
		b.StartQuestions()
		b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: t, Class: dnsmessage.ClassINET})
		if opt {
			b.StartAdditionals()
			var oh dnsmessage.ResourceHeader
			oh.SetEDNS0(size, dnsmessage.RCodeSuccess, false)
			b.OPTResource(oh, dnsmessage.OPTResource{})
		}
		out, err := b.Finish()
		if err != nil {
			f.Fatal(err)
		}
		return out
	}
	f.Add(query("web.shop.svc.cluster.local.", dnsmessage.TypeA, false, 0))
	f.Add(query("web.shop.svc.cluster.local.", dnsmessage.TypeAAAA, true, 1232))
	f.Add(query("web.shop.svc.cluster.local.shop.svc.cluster.local.", dnsmessage.TypeA, false, 0))
	f.Add(query("API.Example.Com.svc.cluster.local.", dnsmessage.TypeA, true, 100))
	f.Add(query("many.example.com.", dnsmessage.TypeA, true, 4096))
	f.Add(query("many.example.com.", dnsmessage.TypeA, false, 0))
	f.Add(query("elsewhere.example.", dnsmessage.TypeA, false, 0))
	f.Add(query("web.shop.svc.cluster.local.", dnsmessage.TypeMX, false, 0))
	f.Fuzz(func(t *testing.T, q []byte) {
		if !wellFormed(q) {
			return // serve drops it before anything else (and so does ServeTCP)
		}
		if _, ok := servfail(q); !ok {
			t.Errorf("no SERVFAIL for a well-formed query %q", q)
		}
		var qp dnsmessage.Parser
		qh, _ := qp.Start(q)
		qs, _ := qp.AllQuestions()
		for _, tr := range []transport{overUDP, overTCP} {
			a, ok := s.local(q, tr)
			if !ok {
				continue
			}
			limit := maxTCPMessage
			if tr == overUDP {
				limit = maxMessage
			}
			if len(a) > limit || tr == overUDP && len(a) > minUDPMessage && !hasOPT(q) {
				t.Fatalf("answer of %d bytes over %v to %q; want at most the transport's and the query's limit", len(a), tr, q)
			}
			var p dnsmessage.Parser
			h, err := p.Start(a)
			if err != nil {
				t.Fatalf("answer %q does not parse: %v", a, err)
			}
			if h.ID != qh.ID || !h.Response {
				t.Fatalf("answer header %+v to query ID %d; want the ID and a response", h, qh.ID)
			}
			aqs, err := p.AllQuestions()
			if err != nil || len(aqs) != 1 || len(qs) != 1 || aqs[0] != qs[0] {
				t.Fatalf("answer questions %v to %v; want the query's one", aqs, qs)
			}
			rrs, err := p.AllAnswers()
			if err != nil {
				t.Fatalf("answer records do not parse: %v", err)
			}
			asked := strings.TrimSuffix(strings.ToLower(qs[0].Name.String()), ".")
			allowed := mesh[asked]
			for _, d := range s.opts.SearchDomains {
				if h, found := strings.CutSuffix(asked, "."+d); found && allowed == nil {
					allowed = mesh[h]
				}
			}
			for _, rr := range rrs {
				var addr netip.Addr
				switch b := rr.Body.(type) {
				case *dnsmessage.AResource:
					addr = netip.AddrFrom4(b.A)
					if qs[0].Type != dnsmessage.TypeA {
						t.Fatalf("an A record answers a %v query", qs[0].Type)
					}
				case *dnsmessage.AAAAResource:
					addr = netip.AddrFrom16(b.AAAA)
					if qs[0].Type != dnsmessage.TypeAAAA {
						t.Fatalf("an AAAA record answers a %v query", qs[0].Type)
					}
				case *dnsmessage.CNAMEResource:
					continue
				default:
					t.Fatalf("answer record %T; want A, AAAA or CNAME", rr.Body)
				}
				if !slices.Contains(allowed, addr) {
					t.Fatalf("answer to %q holds %s, which the mesh does not have for it (%v)", asked, addr, allowed)
				}
			}
		}
	})
}

// hasOPT reports whether q carries an EDNS0 OPT record.
func hasOPT(q []byte) bool {
	var p dnsmessage.Parser
	if _, err := p.Start(q); err != nil {
		return false
	}
	if err := p.SkipAllQuestions(); err != nil {
		return false
	}
	if err := p.SkipAllAnswers(); err != nil {
		return false
	}
	if err := p.SkipAllAuthorities(); err != nil {
		return false
	}
	for {
		h, err := p.AdditionalHeader()
		if err != nil {
			return false
		}
		if h.Type == dnsmessage.TypeOPT {
			return true
		}
		if err := p.SkipAdditional(); err != nil {
			return false
		}
	}
}
