// Command meshlet-cni is the chained CNI plugin the node agent installs on
// every node; see package node-agent/cni. It must not be run by hand.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/meshlet/meshlet/node-agent/cni"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.VersionInfo, "meshlet-cni: tells the meshlet node agent about new pods")
}
