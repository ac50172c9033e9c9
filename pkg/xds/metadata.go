package xds

import "github.com/meshlet/meshlet/pkg/xds/xdsnode"

// NodeCert and the metadata functions live in xdsnode; these are their
// names here.
type NodeCert = xdsnode.NodeCert

var (
	CertsMetadata     = xdsnode.CertsMetadata
	CertsFromMetadata = xdsnode.CertsFromMetadata
)
