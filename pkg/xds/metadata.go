package xds

import (
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// A client reports the certificates it holds in its xDS node metadata, so a
// meshd replica that did not sign them (it restarted, or another replica
// did) still knows when they expire.
const (
	// MetadataCertificates is the node metadata key: a list of
	// {"identity": <SPIFFE ID>, "notAfter": <RFC 3339>}.
	MetadataCertificates = "MESHLET_CERTIFICATES"
	// maxReportedCerts bounds the entries read from one client, and
	// maxReportedIdentity one identity's length: the metadata comes from the
	// network.
	maxReportedCerts    = 512
	maxReportedIdentity = 2048
)

// NodeCert is one certificate a client holds.
type NodeCert struct {
	Identity string
	NotAfter time.Time
}

// CertsMetadata encodes certs as node metadata.
func CertsMetadata(certs []NodeCert) *structpb.Struct {
	list := make([]*structpb.Value, 0, len(certs))
	for _, c := range certs {
		list = append(list, structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			"identity": structpb.NewStringValue(c.Identity),
			"notAfter": structpb.NewStringValue(c.NotAfter.UTC().Format(time.RFC3339)),
		}}))
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataCertificates: structpb.NewListValue(&structpb.ListValue{Values: list}),
	}}
}

// CertsFromMetadata decodes what CertsMetadata encoded, skipping malformed
// entries and keeping at most maxReportedCerts.
func CertsFromMetadata(md *structpb.Struct) []NodeCert {
	var out []NodeCert
	for _, v := range md.GetFields()[MetadataCertificates].GetListValue().GetValues() {
		if len(out) == maxReportedCerts {
			break
		}
		f := v.GetStructValue().GetFields()
		id := f["identity"].GetStringValue()
		na, err := time.Parse(time.RFC3339, f["notAfter"].GetStringValue())
		if id == "" || len(id) > maxReportedIdentity || err != nil {
			continue
		}
		out = append(out, NodeCert{Identity: id, NotAfter: na})
	}
	return out
}
