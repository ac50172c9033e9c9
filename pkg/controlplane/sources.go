package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	policyv1alpha1 "github.com/meshlet/meshlet/pkg/api/policy/v1alpha1"
	"github.com/meshlet/meshlet/pkg/crdwatch"
)

// ErrCRDMissing is wrapped by Start when a CRD meshd needs is not installed.
var ErrCRDMissing = errors.New("required CRDs are not installed")

// InstallCRDsCommand is how a user installs the CRDs meshd needs (the
// standard set; not -R, which would take deploy/crds/experimental/ too).
const InstallCRDsCommand = "kubectl apply --server-side -f deploy/crds/ -f deploy/crds/meshlet/"

// Op is what happened to an object.
type Op string

// Change operations.
const (
	OpAdd    Op = "add"
	OpUpdate Op = "update"
	OpDelete Op = "delete"
)

// Change names one object that changed.
type Change struct {
	// Kind is one of the Kind* constants.
	Kind string
	// Namespace and Name of the object; Namespace is empty for cluster-scoped kinds.
	Namespace string
	Name      string
	// Op is add, update or delete.
	Op Op
}

// Listener receives changes as informers see them, one call per event, from
// informer goroutines: it must be safe for concurrent use and return quickly
// (debouncing and rebuilding are the caller's job).
type Listener interface {
	OnChange(Change)
}

// ListenerFunc adapts a function to Listener.
type ListenerFunc func(Change)

// OnChange calls f.
func (f ListenerFunc) OnChange(c Change) { f(c) }

// SourcesOptions configures Sources.
type SourcesOptions struct {
	// Kube is the Kubernetes client. Required.
	Kube kubernetes.Interface
	// Istio is the istio.io/client-go client. Required.
	Istio istioclient.Interface
	// Gateway is the Gateway API client. Required.
	Gateway gatewayclient.Interface
	// Dynamic reads meshlet's own CRDs (policy.meshlet.dev); nil means
	// they are not watched.
	Dynamic dynamic.Interface
	// Listener receives every change after the initial sync. Nil means changes
	// are only visible through Inputs.
	Listener Listener
	// Resync is the informers' resync period; zero means never (resyncs of
	// unchanged objects are not reported anyway).
	Resync time.Duration
	// SkipCRDCheck skips the check that the mesh CRDs are installed; for
	// clients that cannot serve discovery (fakes). The optional CRDs are
	// then taken as installed.
	SkipCRDCheck bool
	// Logger reports optional CRDs that are not installed. Nil means
	// slog.Default().
	Logger *slog.Logger
	// CRDPoll is how often discovery is asked again, after Start, for the
	// optional CRDs that were not installed then (BackendTLSPolicy,
	// TLSRoute, TCPRoute, ListenerSet, XBackendTrafficPolicy): one
	// installed later is read from then on, without a restart. Zero means
	// DefaultCRDPoll.
	CRDPoll time.Duration
	// CRDs tells when a CRD is installed or changes, so that an optional
	// CRD installed after Start is read at once rather than at the next
	// CRDPoll. Nil: the poll alone.
	CRDs *crdwatch.Watcher
}

// DefaultCRDPoll is how often, by default, Sources and the deployer look
// for optional CRDs installed after meshd started.
const DefaultCRDPoll = 30 * time.Second

// watchedCRD is one CRD meshd reads, as discovery reports it.
type watchedCRD struct {
	groupVersion, resource, kind string
}

// requiredCRDs lists the CRDs meshd needs. Each is watched at its v1 version:
// the API server serves the same objects at every version a CRD defines, so
// objects written as v1alpha3 or v1beta1 are seen here too.
var requiredCRDs = []watchedCRD{
	{"networking.istio.io/v1", "virtualservices", "VirtualService"},
	{"networking.istio.io/v1", "destinationrules", "DestinationRule"},
	{"networking.istio.io/v1", "gateways", "Gateway"},
	{"networking.istio.io/v1", "serviceentries", "ServiceEntry"},
	{"networking.istio.io/v1", "workloadentries", "WorkloadEntry"},
	{"security.istio.io/v1", "peerauthentications", "PeerAuthentication"},
	{"security.istio.io/v1", "authorizationpolicies", "AuthorizationPolicy"},
	{"security.istio.io/v1", "requestauthentications", "RequestAuthentication"},
	{"telemetry.istio.io/v1", "telemetries", "Telemetry"},
	{"gateway.networking.k8s.io/v1", "gatewayclasses", "GatewayClass"},
	{"gateway.networking.k8s.io/v1", "gateways", "Gateway"},
	{"gateway.networking.k8s.io/v1", "httproutes", "HTTPRoute"},
	{"gateway.networking.k8s.io/v1", "grpcroutes", "GRPCRoute"},
	{"gateway.networking.k8s.io/v1", "referencegrants", "ReferenceGrant"},
	{"policy.meshlet.dev/v1alpha1", "localratelimitpolicies", "LocalRateLimitPolicy"},
}

// backendTLSPolicyCRD is read when the cluster serves it and done without
// otherwise (optionalCRDs).
var backendTLSPolicyCRD = watchedCRD{"gateway.networking.k8s.io/v1", "backendtlspolicies", "BackendTLSPolicy"}

// tlsRouteCRD and tcpRouteCRD, Gateway API's L4 routes, and
// listenerSetCRD (GEP-1713), all v1 since its v1.5, are read when the
// cluster serves them, as BackendTLSPolicy is (optionalCRDs).
var (
	tlsRouteCRD    = watchedCRD{"gateway.networking.k8s.io/v1", "tlsroutes", KindTLSRoute}
	tcpRouteCRD    = watchedCRD{"gateway.networking.k8s.io/v1", "tcproutes", KindTCPRoute}
	listenerSetCRD = watchedCRD{"gateway.networking.k8s.io/v1", "listenersets", KindListenerSet}
	// backendTrafficCRD is of Gateway API's experimental channel only.
	backendTrafficCRD = watchedCRD{"gateway.networking.x-k8s.io/v1alpha1", "xbackendtrafficpolicies", KindXBackendTrafficPolicy}
)

// Sources watches every object the Builder reads.
type Sources struct {
	opts    SourcesOptions
	kube    informers.SharedInformerFactory
	istio   istioinformers.SharedInformerFactory
	gateway gatewayinformers.SharedInformerFactory
	dynamic dynamicinformer.DynamicSharedInformerFactory
	secrets informers.SharedInformerFactory // TLS Secrets only (ingress credentials)

	// configMaps holds ConfigMaps trimmed to their CA bundle and the mesh
	// config, read for BackendTLSPolicy's caCertificateRefs and extension
	// providers.
	configMaps informers.SharedInformerFactory

	mu sync.Mutex
	// informers are those Inputs and Pods read. NewSources makes most;
	// Start adds those of the optional CRDs served then, and the CRD
	// poller (watchInstalled) appends one of an optional CRD installed
	// later only once its cache has synced, so Inputs never reads a
	// partly listed kind as if it were whole. Guarded by mu once Start
	// has begun; read as a snapshot (appends never touch the elements a
	// snapshot holds).
	informers []kindInformer
	synced    bool
	cancel    context.CancelFunc
	// pollers is the CRD poller and the goroutines waiting for a newly
	// installed CRD's cache; Close waits for them.
	pollers sync.WaitGroup
}

type kindInformer struct {
	kind     string
	informer cache.SharedIndexInformer
	// live, when set (the informer of a CRD installed after Start), says
	// whether the informer's changes reach the Listener yet: not until
	// its cache has synced and it is among the informers Inputs reads.
	live *atomic.Bool
}

// NewSources prepares informers; nothing runs until Start.
func NewSources(opts SourcesOptions) (*Sources, error) {
	if opts.Kube == nil || opts.Istio == nil || opts.Gateway == nil {
		return nil, errors.New("new sources: Kube, Istio and Gateway clients are required")
	}
	s := &Sources{
		opts:    opts,
		kube:    informers.NewSharedInformerFactory(opts.Kube, opts.Resync),
		istio:   istioinformers.NewSharedInformerFactory(opts.Istio, opts.Resync),
		gateway: gatewayinformers.NewSharedInformerFactory(opts.Gateway, opts.Resync),
		// Ingress credentials (an Istio Gateway server's tls.credentialName)
		// are Secrets of type kubernetes.io/tls; no other Secret is listed,
		// and of these only the certificate, key and CA entries are kept.
		secrets: informers.NewSharedInformerFactoryWithOptions(opts.Kube, opts.Resync,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "type=" + string(corev1.SecretTypeTLS) }),
			informers.WithTransform(trimTLSSecret)),
		// Of ConfigMaps only the CA bundle and the mesh config (the "mesh"
		// of one named "istio") are kept: every namespace has a few
		// (kube-root-ca.crt, istio-ca-root-cert) and users keep whatever
		// they like in theirs.
		configMaps: informers.NewSharedInformerFactoryWithOptions(opts.Kube, opts.Resync, informers.WithTransform(trimCAConfigMap)),
	}
	if s.opts.Logger == nil {
		s.opts.Logger = slog.Default()
	}
	core := s.kube.Core().V1()
	nodes := core.Nodes().Informer()
	if err := nodes.SetTransform(trimNode); err != nil {
		return nil, fmt.Errorf("trim Nodes: %w", err)
	}
	nw := s.istio.Networking().V1()
	sec := s.istio.Security().V1()
	gw := s.gateway.Gateway().V1()
	s.informers = []kindInformer{
		{kind: KindNamespace, informer: core.Namespaces().Informer()},
		{kind: KindPod, informer: core.Pods().Informer()},
		{kind: KindService, informer: core.Services().Informer()},
		{kind: KindEndpointSlice, informer: s.kube.Discovery().V1().EndpointSlices().Informer()},
		{kind: KindServiceAccount, informer: core.ServiceAccounts().Informer()},
		{kind: KindNode, informer: nodes},
		{kind: KindVirtualService, informer: nw.VirtualServices().Informer()},
		{kind: KindDestinationRule, informer: nw.DestinationRules().Informer()},
		{kind: KindIstioGateway, informer: nw.Gateways().Informer()},
		{kind: KindServiceEntry, informer: nw.ServiceEntries().Informer()},
		{kind: KindWorkloadEntry, informer: nw.WorkloadEntries().Informer()},
		{kind: KindPeerAuthentication, informer: sec.PeerAuthentications().Informer()},
		{kind: KindAuthorizationPolicy, informer: sec.AuthorizationPolicies().Informer()},
		{kind: KindRequestAuthentication, informer: sec.RequestAuthentications().Informer()},
		{kind: KindTelemetry, informer: s.istio.Telemetry().V1().Telemetries().Informer()},
		{kind: KindGatewayClass, informer: gw.GatewayClasses().Informer()},
		{kind: KindGateway, informer: gw.Gateways().Informer()},
		{kind: KindHTTPRoute, informer: gw.HTTPRoutes().Informer()},
		{kind: KindGRPCRoute, informer: gw.GRPCRoutes().Informer()},
		{kind: KindReferenceGrant, informer: gw.ReferenceGrants().Informer()},
		{kind: KindSecret, informer: s.secrets.Core().V1().Secrets().Informer()},
		// The mesh config (extension providers) and BackendTLSPolicy's
		// CA bundles.
		{kind: KindConfigMap, informer: s.configMaps.Core().V1().ConfigMaps().Informer()},
	}
	if opts.Dynamic != nil {
		s.dynamic = dynamicinformer.NewDynamicSharedInformerFactory(opts.Dynamic, opts.Resync)
		s.informers = append(s.informers, kindInformer{kind: KindLocalRateLimitPolicy, informer: s.dynamic.ForResource(policyv1alpha1.LocalRateLimitPolicyResource).Informer()})
	}
	for _, ki := range s.informers {
		if err := s.addHandler(ki); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Sources) addHandler(ki kindInformer) error {
	if _, err := ki.informer.AddEventHandler(s.handler(ki.kind, ki.live)); err != nil {
		return fmt.Errorf("add %s event handler: %w", ki.kind, err)
	}
	return nil
}

// snapshot returns the informers Inputs and Pods read.
func (s *Sources) snapshot() []kindInformer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.informers
}

// optionalCRD is a CRD meshd reads when the cluster serves it and does
// without otherwise.
type optionalCRD struct {
	crd watchedCRD
	// informer makes (and registers with s.gateway) the kind's informer.
	informer func() (cache.SharedIndexInformer, error)
	// lost says what goes unserved without the CRD, why, why it may be
	// missing.
	lost, why string
}

// optionalCRDs are the CRDs meshd reads once the cluster serves them:
// BackendTLSPolicy reached the Gateway API's v1 only in its v1.4,
// TLSRoute, TCPRoute and ListenerSet in its v1.5, and clusters with an
// older Gateway API install are common (refusing to start there would
// take the whole mesh down for one feature); XBackendTrafficPolicy is of
// its experimental channel only.
func (s *Sources) optionalCRDs() []optionalCRD {
	gw := s.gateway.Gateway().V1()
	informer := func(f func() cache.SharedIndexInformer) func() (cache.SharedIndexInformer, error) {
		return func() (cache.SharedIndexInformer, error) { return f(), nil }
	}
	return []optionalCRD{
		{backendTLSPolicyCRD, func() (cache.SharedIndexInformer, error) {
			btls := gw.BackendTLSPolicies().Informer()
			if err := btls.SetTransform(trimBackendTLSPolicy); err != nil {
				return nil, fmt.Errorf("trim BackendTLSPolicies: %w", err)
			}
			return btls, nil
		}, "Services get no TLS origination from BackendTLSPolicies", "Gateway API before v1.4"},
		{tlsRouteCRD, informer(func() cache.SharedIndexInformer { return gw.TLSRoutes().Informer() }),
			"Gateways' TLS passthrough listeners and waypoints get no TLSRoutes", "Gateway API before v1.5"},
		{tcpRouteCRD, informer(func() cache.SharedIndexInformer { return gw.TCPRoutes().Informer() }),
			"Gateways' TCP listeners and waypoints get no TCPRoutes", "Gateway API before v1.5"},
		{listenerSetCRD, informer(func() cache.SharedIndexInformer { return gw.ListenerSets().Informer() }),
			"listeners of ListenerSets are not served nor their status written", "Gateway API before v1.5"},
		{backendTrafficCRD, informer(func() cache.SharedIndexInformer {
			return s.gateway.Experimental().V1alpha1().XBackendTrafficPolicies().Informer()
		}),
			"Services get no retry budget or session persistence from XBackendTrafficPolicies", "it is in Gateway API's experimental channel only: meshctl install (or upgrade) --gateway-api-channel experimental"},
	}
}

// statusWritten are the kinds whose status meshd writes and the build
// does not read (Gateways are not among them: the build reads the
// addresses the deployer writes into their status; of a ListenerSet it
// reads the spec only).
var statusWritten = map[string]bool{
	KindHTTPRoute: true, KindGRPCRoute: true, KindTLSRoute: true, KindTCPRoute: true, KindBackendTLSPolicy: true,
	KindServiceEntry: true, KindGatewayClass: true, KindListenerSet: true, KindXBackendTrafficPolicy: true,
}

// trimmedKinds are the kinds whose informers keep only what the build reads
// of them (trimNode, trimCAConfigMap, trimTLSSecret, trimBackendTLSPolicy).
var trimmedKinds = map[string]bool{KindNode: true, KindConfigMap: true, KindSecret: true, KindBackendTLSPolicy: true}

// unchangedWhenTrimmed reports whether an update of an object of a trimmed
// kind changed nothing the build reads: the two trimmed objects are equal
// but for their resourceVersion (a kubelet's Node status update, a
// ConfigMap's data other than its CA bundle or mesh config).
func unchangedWhenTrimmed(kind string, oldObj, newObj any) bool {
	if !trimmedKinds[kind] {
		return false
	}
	o, ok1 := oldObj.(runtime.Object)
	n, ok2 := newObj.(runtime.Object)
	if !ok1 || !ok2 {
		return false
	}
	o, n = o.DeepCopyObject(), n.DeepCopyObject()
	for _, x := range []runtime.Object{o, n} {
		m, err := meta.Accessor(x)
		if err != nil {
			return false
		}
		m.SetResourceVersion("")
	}
	return reflect.DeepEqual(o, n)
}

// statusOnlyUpdate reports whether an update of an object of kind changed
// nothing the build reads: the kind's status is all meshd does not read,
// and its spec (generation), labels, annotations and deletion stayed. Each
// status write of meshd's would otherwise rebuild the mesh once more.
func statusOnlyUpdate(kind string, o, n metav1.Object) bool {
	return statusWritten[kind] && n.GetGeneration() != 0 && o.GetGeneration() == n.GetGeneration() &&
		maps.Equal(o.GetLabels(), n.GetLabels()) && maps.Equal(o.GetAnnotations(), n.GetAnnotations()) &&
		o.GetDeletionTimestamp().Equal(n.GetDeletionTimestamp())
}

// notify tells the Listener of a change to obj, of kind, once Start has
// synced the caches and, for an informer added later (live set), once
// that one has synced too.
func (s *Sources) notify(kind string, live *atomic.Bool, op Op, obj any) {
	s.mu.Lock()
	synced := s.synced
	s.mu.Unlock()
	if !synced || s.opts.Listener == nil || (live != nil && !live.Load()) {
		return
	}
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	s.opts.Listener.OnChange(Change{Kind: kind, Namespace: m.GetNamespace(), Name: m.GetName(), Op: op})
}

func (s *Sources) handler(kind string, live *atomic.Bool) cache.ResourceEventHandler {
	// Of ConfigMaps only CA bundles and the mesh config are read: changes
	// to the others (meshd's own status reports, the root certificate it
	// publishes, whatever apps keep) must not rebuild the mesh.
	relevant := func(obj any) bool { return kind != KindConfigMap || holdsRead(obj) }
	notify := func(op Op, obj any) { s.notify(kind, live, op, obj) }
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if relevant(obj) {
				notify(OpAdd, obj)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, err1 := meta.Accessor(oldObj)
			n, err2 := meta.Accessor(newObj)
			if err1 == nil && err2 == nil && o.GetResourceVersion() == n.GetResourceVersion() && n.GetResourceVersion() != "" {
				return // a resync, not a change
			}
			if unchangedWhenTrimmed(kind, oldObj, newObj) {
				return // nothing the build reads changed
			}
			if err1 == nil && err2 == nil && statusOnlyUpdate(kind, o, n) {
				return // meshd's own status write (or another controller's)
			}
			notify(OpUpdate, newObj)
		},
		DeleteFunc: func(obj any) {
			if relevant(obj) {
				notify(OpDelete, obj)
			}
		},
	}
}

// CheckCRDs asks the API server's discovery for every CRD meshd needs and
// returns an error wrapping ErrCRDMissing that names each missing one and the
// command that installs them.
func CheckCRDs(kube kubernetes.Interface) error {
	missing, err := missingCRDs(kube, requiredCRDs)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s; install them with %q", ErrCRDMissing, strings.Join(missing, ", "), InstallCRDsCommand)
	}
	return nil
}

// missingCRDs names those of crds discovery does not serve.
func missingCRDs(kube kubernetes.Interface, crds []watchedCRD) ([]string, error) {
	ok, err := servedCRDs(kube, crds)
	if err != nil {
		return nil, err
	}
	var missing []string
	for i, c := range crds {
		if !ok[i] {
			missing = append(missing, c.String())
		}
	}
	return missing, nil
}

// name is c's CustomResourceDefinition's name: plural.group.
func (c watchedCRD) name() string {
	group, _, _ := strings.Cut(c.groupVersion, "/")
	return c.resource + "." + group
}

// String names c as missingCRDs does.
func (c watchedCRD) String() string {
	group, _, _ := strings.Cut(c.groupVersion, "/")
	return fmt.Sprintf("%s.%s (%s %s)", c.resource, group, c.groupVersion, c.kind)
}

// servedCRDs reports, for each of crds, whether discovery serves it: one
// discovery call per group-version.
func servedCRDs(kube kubernetes.Interface, crds []watchedCRD) ([]bool, error) {
	byGV := map[string]map[string]bool{}
	out := make([]bool, len(crds))
	for i, c := range crds {
		served, ok := byGV[c.groupVersion]
		if !ok {
			served = map[string]bool{}
			list, err := kube.Discovery().ServerResourcesForGroupVersion(c.groupVersion)
			switch {
			case apierrors.IsNotFound(err):
			case err != nil:
				return nil, fmt.Errorf("discover %s: %w", c.groupVersion, err)
			default:
				for _, r := range list.APIResources {
					served[r.Name] = true
				}
			}
			byGV[c.groupVersion] = served
		}
		out[i] = served[c.resource]
	}
	return out, nil
}

// Start checks the CRDs, starts every informer and waits until their caches
// have synced; from then on the Listener hears every change. The informers
// run until Close or until ctx is done. Without one of the optional CRDs
// (BackendTLSPolicy, TLSRoute, TCPRoute, ListenerSet,
// XBackendTrafficPolicy) it logs so and does not watch that kind until
// the CRD is installed: discovery is asked again every CRDPoll
// (watchInstalled), and a CRD installed later is read from then on.
func (s *Sources) Start(ctx context.Context) error {
	optional := s.optionalCRDs()
	served := make([]bool, len(optional))
	if s.opts.SkipCRDCheck {
		for i := range served {
			served[i] = true
		}
	} else {
		if err := CheckCRDs(s.opts.Kube); err != nil {
			return fmt.Errorf("start sources: %w", err)
		}
		crds := make([]watchedCRD, len(optional))
		for i, c := range optional {
			crds[i] = c.crd
		}
		var err error
		if served, err = servedCRDs(s.opts.Kube, crds); err != nil {
			return fmt.Errorf("start sources: %w", err)
		}
	}
	var pending []optionalCRD
	for i, c := range optional {
		if !served[i] {
			s.opts.Logger.Warn(c.crd.kind+" is not read: its CRD is not installed ("+c.why+"); "+c.lost+
				" until it is installed (meshd reads it then, no restart needed)",
				"missing", c.crd.String(), "install", InstallCRDsCommand)
			pending = append(pending, c)
			continue
		}
		inf, err := c.informer()
		if err != nil {
			return fmt.Errorf("start sources: %w", err)
		}
		ki := kindInformer{kind: c.crd.kind, informer: inf}
		if err := s.addHandler(ki); err != nil {
			return fmt.Errorf("start sources: %w", err)
		}
		s.informers = append(s.informers, ki)
	}
	ctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	s.kube.Start(ctx.Done())
	s.istio.Start(ctx.Done())
	s.gateway.Start(ctx.Done())
	s.secrets.Start(ctx.Done())
	s.configMaps.Start(ctx.Done())
	if s.dynamic != nil {
		s.dynamic.Start(ctx.Done())
	}
	syncs := make([]cache.InformerSynced, 0, len(s.informers))
	for _, ki := range s.informers {
		syncs = append(syncs, ki.informer.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return fmt.Errorf("start sources: caches did not sync: %w", context.Cause(ctx))
	}
	s.mu.Lock()
	s.synced = true
	s.mu.Unlock()
	if len(pending) > 0 {
		s.pollers.Add(1)
		go func() {
			defer s.pollers.Done()
			s.watchInstalled(ctx, pending)
		}()
	}
	return nil
}

// watchInstalled asks discovery whether the CRDs of pending are served yet
// (one call per group-version among them), each time one of them is added
// or changes (SourcesOptions.CRDs) and every CRDPoll besides, and picks up
// each as it appears, until all are or ctx ends.
func (s *Sources) watchInstalled(ctx context.Context, pending []optionalCRD) {
	period := s.opts.CRDPoll
	if period <= 0 {
		period = DefaultCRDPoll
	}
	names := make([]string, len(pending))
	for i, c := range pending {
		names[i] = c.crd.name()
	}
	changed, stop := s.opts.CRDs.Subscribe(names...)
	defer stop()
	t := time.NewTicker(period)
	defer t.Stop()
	for len(pending) > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
		}
		crds := make([]watchedCRD, len(pending))
		for i, c := range pending {
			crds[i] = c.crd
		}
		served, err := servedCRDs(s.opts.Kube, crds)
		if err != nil {
			s.opts.Logger.Debug("look for optional CRDs installed since start", "err", err)
			continue
		}
		var still []optionalCRD
		for i, c := range pending {
			if !served[i] {
				still = append(still, c)
				continue
			}
			if err := s.pickUp(ctx, c); err != nil {
				s.opts.Logger.Error(c.crd.kind+" CRD installed but not read", "err", err)
			}
		}
		pending = still
	}
}

// pickUp starts the informer of c, whose CRD has just been installed. Its
// changes reach the Listener, and its objects Inputs, only once its cache
// has synced (waited for in a goroutine of its own, so that one kind
// slow to list holds up no other): then it joins the informers Inputs
// reads and every object it holds is reported as added, which rebuilds
// with them. Until then the build goes on without the kind, as before.
func (s *Sources) pickUp(ctx context.Context, c optionalCRD) error {
	inf, err := c.informer()
	if err != nil {
		return err
	}
	ki := kindInformer{kind: c.crd.kind, informer: inf, live: new(atomic.Bool)}
	if err := s.addHandler(ki); err != nil {
		return err
	}
	s.opts.Logger.Info(c.crd.kind+" CRD installed: now read", "crd", c.crd.String())
	// Starts only the informers not started yet: this one.
	s.gateway.Start(ctx.Done())
	s.pollers.Add(1)
	go func() {
		defer s.pollers.Done()
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return
		}
		s.mu.Lock()
		s.informers = append(s.informers, ki)
		s.mu.Unlock()
		ki.live.Store(true)
		// Changes heard before live were dropped; the cache holds their
		// outcome. An object reported twice (a change heard just after
		// live) costs a coalesced rebuild at most.
		for _, obj := range inf.GetStore().List() {
			s.notify(ki.kind, ki.live, OpAdd, obj)
		}
	}()
	return nil
}

// Inputs returns the objects the informers currently hold, ready for
// Builder.Build. The objects are the informers' cached copies: read-only.
// A kind whose CRD was installed after Start is read once its cache has
// synced, not before.
func (s *Sources) Inputs() (*Inputs, error) {
	in := &Inputs{}
	for _, ki := range s.snapshot() {
		for _, obj := range ki.informer.GetStore().List() {
			ro, ok := obj.(runtime.Object)
			if !ok {
				continue
			}
			if err := in.Add(ro); err != nil {
				return nil, fmt.Errorf("read %s cache: %w", ki.kind, err)
			}
		}
	}
	return in, nil
}

// Pods returns the pods the informer holds: cached, read-only objects.
func (s *Sources) Pods() []*corev1.Pod {
	var out []*corev1.Pod
	for _, ki := range s.snapshot() {
		if ki.kind != KindPod {
			continue
		}
		for _, obj := range ki.informer.GetStore().List() {
			if p, ok := obj.(*corev1.Pod); ok {
				out = append(out, p)
			}
		}
	}
	return out
}

// trimTLSSecret keeps of a TLS Secret only what an ingress listener serves,
// so that meshd's cache holds no more secret material than it needs.
func trimTLSSecret(obj any) (any, error) {
	sec, ok := obj.(*corev1.Secret)
	if !ok {
		return obj, nil
	}
	out := &corev1.Secret{TypeMeta: sec.TypeMeta, ObjectMeta: trimmedMeta(sec.ObjectMeta), Type: sec.Type, Data: map[string][]byte{}}
	for _, k := range []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey, caCertKey} {
		if v, ok := sec.Data[k]; ok {
			out.Data[k] = v
		}
	}
	return out, nil
}

// trimCAConfigMap keeps of a ConfigMap only its CA bundle (ca.crt, the
// key Gateway API names for caCertificateRefs), as Data or BinaryData.
func trimCAConfigMap(obj any) (any, error) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return obj, nil
	}
	out := &corev1.ConfigMap{TypeMeta: cm.TypeMeta, ObjectMeta: trimmedMeta(cm.ObjectMeta)}
	if v, ok := cm.Data[caCertKey]; ok {
		out.Data = map[string]string{caCertKey: v}
	}
	if v, ok := cm.Data[meshConfigKey]; ok && cm.Name == meshConfigName {
		if out.Data == nil {
			out.Data = map[string]string{}
		}
		out.Data[meshConfigKey] = v
	}
	if v, ok := cm.BinaryData[caCertKey]; ok {
		out.BinaryData = map[string][]byte{caCertKey: v}
	}
	return out, nil
}

// holdsRead reports whether a trimmed ConfigMap holds anything the build
// reads: a CA bundle or the mesh config (trimCAConfigMap drops the rest).
func holdsRead(obj any) bool {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return false
	}
	for _, v := range cm.Data {
		if v != "" {
			return true
		}
	}
	return len(cm.BinaryData[caCertKey]) > 0
}

// caBundle is a ConfigMap's ca.crt, "" for anything else.
func caBundle(obj any) string {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return ""
	}
	if v := cm.Data[caCertKey]; v != "" {
		return v
	}
	return string(cm.BinaryData[caCertKey])
}

// trimBackendTLSPolicy drops what the builder does not read of a
// BackendTLSPolicy: annotations (often the whole object again, as
// kubectl's last-applied-configuration), managed fields and status.
func trimBackendTLSPolicy(obj any) (any, error) {
	p, ok := obj.(*gatewayv1.BackendTLSPolicy)
	if !ok {
		return obj, nil
	}
	return &gatewayv1.BackendTLSPolicy{TypeMeta: p.TypeMeta, ObjectMeta: trimmedMeta(p.ObjectMeta), Spec: p.Spec}, nil
}

// trimNode keeps of a Node its name and labels (a workload's locality): its
// status, with every image the node holds, is most of its size, and
// changes with each kubelet status update.
func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID,
		ResourceVersion: n.ResourceVersion, Labels: n.Labels, DeletionTimestamp: n.DeletionTimestamp}}, nil
}

// trimmedMeta is the metadata the builder reads of a trimmed object:
// identity, version and age (for precedence), no labels, annotations or
// managed fields.
func trimmedMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: m.Namespace, Name: m.Name, UID: m.UID,
		ResourceVersion: m.ResourceVersion, CreationTimestamp: m.CreationTimestamp, Generation: m.Generation}
}

// Close stops the informers and the CRD poller and waits for their
// goroutines.
func (s *Sources) Close() error {
	s.mu.Lock()
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	s.pollers.Wait()
	s.kube.Shutdown()
	s.istio.Shutdown()
	s.gateway.Shutdown()
	s.secrets.Shutdown()
	s.configMaps.Shutdown()
	if s.dynamic != nil {
		s.dynamic.Shutdown()
	}
	return nil
}
