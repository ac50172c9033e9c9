package dnsproxy

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"
)

func TestSearchDomains(t *testing.T) {
	tests := []struct {
		in, want []string
	}{
		{KubeSearchDomains("shop", "cluster.local"), []string{"shop.svc.cluster.local", "svc.cluster.local", "cluster.local"}},
		{[]string{"Cluster.Local.", "svc.cluster.local", "", ".", "Shop.svc.cluster.local."}, []string{"shop.svc.cluster.local", "svc.cluster.local", "cluster.local"}},
		{[]string{"corp.example", "a.b"}, []string{"corp.example", "a.b"}},
		{nil, nil},
	}
	for _, tt := range tests {
		if got := searchDomains(tt.in); !cmp.Equal(got, tt.want) {
			t.Errorf("searchDomains(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestForwardable(t *testing.T) {
	tests := []struct {
		orig string
		want bool
	}{
		{"198.19.46.3:53", true},
		{"[fd00::53]:53", true},
		{"[::ffff:198.19.46.3]:53", true},
		{"169.254.20.10:53", true}, // node-local DNS cache
		{"127.0.0.1:15053", false}, // the proxy itself
		{"[::1]:15053", false},
		{"[::ffff:127.0.0.1]:15053", false},
		{"127.0.0.53:53", false}, // the agent's loopback is not the pod's
		{"198.19.46.2:15053", false},
		{"0.0.0.0:53", false},
		{"[::]:53", false},
		{"198.19.46.3:0", false},
	}
	for _, tt := range tests {
		if got := forwardable(netip.MustParseAddrPort(tt.orig)); got != tt.want {
			t.Errorf("forwardable(%s) = %v; want %v", tt.orig, got, tt.want)
		}
	}
	if forwardable(netip.AddrPort{}) {
		t.Errorf("forwardable(zero AddrPort) = true; want false")
	}
}

// ednsQuery builds a standard query with ID 0x4d4c for name and typ,
// followed by the given additional records (OPT records, well-formed or not).
func ednsQuery(t *testing.T, name string, typ dnsmessage.Type, additionals ...dnsmessage.ResourceHeader) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4d4c, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartAdditionals(); err != nil {
		t.Fatal(err)
	}
	for _, rh := range additionals {
		if err := b.OPTResource(rh, dnsmessage.OPTResource{}); err != nil {
			t.Fatal(err)
		}
	}
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// opt is an OPT record's header advertising size, of EDNS version.
func opt(t *testing.T, size int, version uint8) dnsmessage.ResourceHeader {
	t.Helper()
	var rh dnsmessage.ResourceHeader
	if err := rh.SetEDNS0(size, dnsmessage.RCodeSuccess, false); err != nil {
		t.Fatal(err)
	}
	rh.TTL |= uint32(version) << 16
	return rh
}

// TestLocalAnswerSize: an answer from the mesh fits what the client takes
// over UDP — 512 bytes without an EDNS0 OPT record, else the size the OPT
// advertises, floored at 512 and capped at maxMessage — keeping as many of
// a name's 300 addresses as fit, never setting TC; an EDNS0 client gets an
// OPT record back. A query with a malformed OPT (two of them, or one not
// owned by the root) is answered FORMERR, one of an EDNS version past 0
// BADVERS, as RFC 6891 asks of a responder.
func TestLocalAnswerSize(t *testing.T) {
	var many4, many6 []netip.Addr
	for i := range 300 {
		many4 = append(many4, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
		many6 = append(many6, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}))
	}
	mesh := map[string][]netip.Addr{
		"many.example.com": append(slices.Clone(many4), many6...),
		"few.example.com":  many4[:3],
	}
	s := &Server{opts: Options{
		Lookup: func(name string) ([]netip.Addr, bool) { a, ok := mesh[name]; return a, ok },
		TTL:    30 * time.Second,
	}}
	notRoot := opt(t, 1232, 0)
	notRoot.Name = dnsmessage.MustNewName("example.com.")

	tests := []struct {
		name        string
		qname       string
		qtype       dnsmessage.Type
		additionals []dnsmessage.ResourceHeader
		rcode       dnsmessage.RCode // extended, as the OPT record and header say together
		limit       int              // the answer's bound; 0 for an error answer
		wantOPT     int              // the payload size the answer's OPT advertises; 0 for none
		records     int              // addresses answered; -1 for as many as fit in limit
	}{
		{name: "no OPT", qname: "many.example.com.", qtype: dnsmessage.TypeA, limit: 512, records: -1},
		{name: "no OPT, AAAA", qname: "many.example.com.", qtype: dnsmessage.TypeAAAA, limit: 512, records: -1},
		{name: "no OPT, a few", qname: "few.example.com.", qtype: dnsmessage.TypeA, limit: 512, records: 3},
		{name: "OPT 1232", qname: "many.example.com.", qtype: dnsmessage.TypeA, additionals: []dnsmessage.ResourceHeader{opt(t, 1232, 0)},
			limit: 1232, wantOPT: 1232, records: -1},
		{name: "OPT 65000 capped", qname: "many.example.com.", qtype: dnsmessage.TypeA, additionals: []dnsmessage.ResourceHeader{opt(t, 65000, 0)},
			limit: maxMessage, wantOPT: maxMessage, records: -1},
		{name: "OPT 65000 AAAA capped", qname: "many.example.com.", qtype: dnsmessage.TypeAAAA, additionals: []dnsmessage.ResourceHeader{opt(t, 65000, 0)},
			limit: maxMessage, wantOPT: maxMessage, records: -1},
		{name: "OPT below 512 floored", qname: "many.example.com.", qtype: dnsmessage.TypeA, additionals: []dnsmessage.ResourceHeader{opt(t, 100, 0)},
			limit: 512, wantOPT: 512, records: -1},
		{name: "two OPT records", qname: "few.example.com.", qtype: dnsmessage.TypeA, additionals: []dnsmessage.ResourceHeader{opt(t, 1232, 0), opt(t, 1232, 0)},
			rcode: dnsmessage.RCodeFormatError},
		{name: "OPT not owned by the root", qname: "few.example.com.", qtype: dnsmessage.TypeA, additionals: []dnsmessage.ResourceHeader{notRoot},
			rcode: dnsmessage.RCodeFormatError},
		{name: "EDNS version 1", qname: "few.example.com.", qtype: dnsmessage.TypeA, additionals: []dnsmessage.ResourceHeader{opt(t, 1232, 1)},
			rcode: rcodeBadVersion, wantOPT: 1232},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, ok := s.local(ednsQuery(t, tt.qname, tt.qtype, tt.additionals...), overUDP)
			if !ok {
				t.Fatalf("local(%s %s) not answered; want an answer from the mesh", tt.qname, tt.qtype)
			}
			var m dnsmessage.Message
			if err := m.Unpack(out); err != nil {
				t.Fatalf("local(%s %s): answer does not parse: %v", tt.qname, tt.qtype, err)
			}
			var gotOPT *dnsmessage.ResourceHeader
			for i, r := range m.Additionals {
				if r.Header.Type == dnsmessage.TypeOPT {
					gotOPT = &m.Additionals[i].Header
				}
			}
			rcode := m.RCode
			if gotOPT != nil {
				rcode = gotOPT.ExtendedRCode(m.RCode)
			}
			if m.ID != 0x4d4c || !m.Response || m.Truncated || rcode != tt.rcode {
				t.Errorf("local(%s %s): ID %#x, response %v, TC %v, rcode %v; want %#x, true, false, %v", tt.qname, tt.qtype, m.ID, m.Response, m.Truncated, rcode, 0x4d4c, tt.rcode)
			}
			switch {
			case tt.wantOPT == 0 && gotOPT != nil:
				t.Errorf("local(%s %s): answer has an OPT record %v; want none (the query had none, or a malformed one)", tt.qname, tt.qtype, gotOPT)
			case tt.wantOPT != 0 && gotOPT == nil:
				t.Errorf("local(%s %s): answer has no OPT record; want one advertising %d", tt.qname, tt.qtype, tt.wantOPT)
			case gotOPT != nil && (int(gotOPT.Class) != tt.wantOPT || gotOPT.DNSSECAllowed() || gotOPT.Name.String() != "."):
				t.Errorf("local(%s %s): answer's OPT %v; want one owned by the root advertising %d, no DO bit", tt.qname, tt.qtype, gotOPT, tt.wantOPT)
			}
			if tt.rcode != dnsmessage.RCodeSuccess {
				if len(m.Answers) != 0 {
					t.Errorf("local(%s %s): %d answers with %v; want none", tt.qname, tt.qtype, len(m.Answers), tt.rcode)
				}
				return
			}
			if len(out) > tt.limit {
				t.Errorf("local(%s %s): %d bytes; want at most %d", tt.qname, tt.qtype, len(out), tt.limit)
			}
			want := many4
			per := 16 // another compressed A record
			if tt.qtype == dnsmessage.TypeAAAA {
				want, per = many6, 28
			}
			n := tt.records
			if n < 0 {
				n = len(m.Answers)
				if n == 0 || n == len(want) || len(out)+per <= tt.limit {
					t.Errorf("local(%s %s): %d addresses in %d bytes; want as many of the %d as fit in %d", tt.qname, tt.qtype, n, len(out), len(want), tt.limit)
				}
			}
			var got []netip.Addr
			for _, r := range m.Answers {
				switch b := r.Body.(type) {
				case *dnsmessage.AResource:
					got = append(got, netip.AddrFrom4(b.A))
				case *dnsmessage.AAAAResource:
					got = append(got, netip.AddrFrom16(b.AAAA))
				}
			}
			if d := cmp.Diff(want[:min(n, len(want))], got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
				t.Errorf("local(%s %s): addresses (-want +got):\n%s", tt.qname, tt.qtype, d)
			}
		})
	}

	// A name the mesh does not know is forwarded whatever its OPT records
	// say: the upstream judges them.
	if _, ok := s.local(ednsQuery(t, "elsewhere.example.", dnsmessage.TypeA, opt(t, 1232, 0), opt(t, 1232, 0)), overUDP); ok {
		t.Errorf("local(elsewhere.example. A, two OPT records) answered; want it forwarded")
	}
}
