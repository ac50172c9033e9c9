package cli

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/meshlet/meshlet/deploy/crds"
)

// channelProbeCRD is the Gateway API CRD whose channel annotation tells
// which channel the cluster has: HTTPRoute is in both channels, and the one
// whose experimental fields (sessionPersistence, retry, ExternalAuth) meshlet
// reads.
const channelProbeCRD = "httproutes.gateway.networking.k8s.io"

// addGatewayAPIChannelFlags adds the flags that choose the Gateway API
// channel of the CRDs a command installs.
func addGatewayAPIChannelFlags(f *pflag.FlagSet, o *installOptions) {
	f.StringVar(&o.gatewayAPIChannel, "gateway-api-channel", "", "Gateway API CRDs to install: standard or experimental (sessionPersistence, retry, ExternalAuth, XBackendTrafficPolicy); default: the channel the cluster has, else standard")
	f.BoolVar(&o.forceGatewayAPIChannel, "force-gateway-api-channel", false, "install the standard channel over the experimental one, dropping the experimental fields from the API")
}

// requestedGatewayAPIChannel is the channel --gateway-api-channel asks for,
// "" when it is not given.
func (o *installOptions) requestedGatewayAPIChannel() (crds.Channel, error) {
	if o.gatewayAPIChannel == "" {
		return "", nil
	}
	ch, err := crds.ParseChannel(o.gatewayAPIChannel)
	if err != nil {
		return "", fmt.Errorf("--gateway-api-channel: %w", err)
	}
	return ch, nil
}

// installedGatewayAPIChannel reads the channel of the Gateway API CRDs in
// the cluster from the annotation of its HTTPRoute CRD: "" when there is
// none, Standard when it has no annotation or another value than
// experimental.
func installedGatewayAPIChannel(ctx context.Context, dyn dynamic.Interface) (crds.Channel, error) {
	u, err := dyn.Resource(crdResource).Get(ctx, channelProbeCRD, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read CRD %s to learn the installed Gateway API channel: %w (check your permissions with kubectl auth can-i get customresourcedefinitions)", channelProbeCRD, err)
	}
	if crds.Channel(u.GetAnnotations()[crds.ChannelAnnotation]) == crds.Experimental {
		return crds.Experimental, nil
	}
	return crds.Standard, nil
}

// clusterGatewayAPIChannel is the channel to install into the cluster dyn
// reaches, given the one asked for (decideGatewayAPIChannel).
func (o *installOptions) clusterGatewayAPIChannel(ctx context.Context, dyn dynamic.Interface, requested crds.Channel) (crds.Channel, error) {
	installed, err := installedGatewayAPIChannel(ctx, dyn)
	if err != nil {
		return "", err
	}
	return decideGatewayAPIChannel(installed, requested, o.forceGatewayAPIChannel)
}

// decideGatewayAPIChannel picks the channel to install from the one the
// cluster has (installed, "" for none) and the one asked for (requested,
// "" when --gateway-api-channel is not given): not given, the installed one
// is kept (standard for none). Going from experimental to standard drops
// fields from the API, which the API server then prunes from the routes that
// set them, so it is refused unless forced.
func decideGatewayAPIChannel(installed, requested crds.Channel, force bool) (crds.Channel, error) {
	switch {
	case requested == "" && installed == "":
		return crds.Standard, nil
	case requested == "":
		return installed, nil
	case requested == crds.Standard && installed == crds.Experimental && !force:
		return "", fmt.Errorf("the cluster has the Gateway API experimental channel CRDs, and installing the standard channel over them removes their experimental fields " +
			"(HTTPRoute and GRPCRoute sessionPersistence, HTTPRoute retry and ExternalAuth filters, among others) from the API: the API server then prunes them from the routes that set them, " +
			"and meshlet stops applying them. Keep the experimental channel with --gateway-api-channel experimental (or leave the flag out), " +
			"or pass --force-gateway-api-channel to install the standard channel anyway (the gateway.networking.x-k8s.io CRDs are left in place)")
	}
	return requested, nil
}
