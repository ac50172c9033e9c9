package deployer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	autoscalingv2ac "k8s.io/client-go/applyconfigurations/autoscaling/v2"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayac "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/meshlet/meshlet/pkg/crdwatch"
)

// Options configure a Deployer.
type Options struct {
	// Kube writes the ServiceAccounts, Deployments and Services. Required.
	Kube kubernetes.Interface
	// Gateway reads Gateways and writes their status. Required.
	Gateway gatewayclient.Interface
	// Render configures the rendered objects; MeshdAddress and TrustDomain
	// are required.
	Render RenderOptions
	// Resync re-applies every Gateway's objects this often, repairing
	// hand edits; zero means 10 minutes.
	Resync time.Duration
	// Logger receives reconcile failures; nil means slog.Default().
	Logger *slog.Logger
	// CRDPoll is how often Run asks discovery again for the ListenerSet
	// CRD when it was not installed at start; zero means 30 seconds.
	CRDPoll time.Duration
	// CRDs tells when the ListenerSet CRD is installed or changes, so that
	// Run asks discovery then rather than at the next CRDPoll. Nil: the
	// poll alone.
	CRDs *crdwatch.Watcher
	// ClassDefaultsNamespace is where class defaults are read from
	// (ConfigMaps labelled ClassDefaultsLabel: infrastructure.go), meshd's
	// own namespace as Istio reads them from istiod's; empty means no
	// class defaults.
	ClassDefaultsNamespace string
}

// Deployer reconciles meshlet-class Gateways. Run it with Run.
type Deployer struct {
	opts     Options
	log      *slog.Logger
	queue    workqueue.TypedRateLimitingInterface[cache.ObjectName]
	gateways gatewaylisters.GatewayLister
	// sets holds the ListenerSet and Namespace caches: nil while the
	// ListenerSet CRD is not installed, stored (once their caches have
	// synced, when the CRD is installed after Run started) by Run while
	// reconcile workers read it.
	sets atomic.Pointer[listenerSetCaches]
	now  func() time.Time
	// warned has, per class, the class defaults ConfigMaps last warned
	// about as several (warnSeveral), so that a warning is logged once
	// per change.
	warnedMu sync.Mutex
	warned   map[gatewayv1.ObjectName]string
}

// listenerSetCaches are what attachedListenerSets reads.
type listenerSetCaches struct {
	// byParent indexes ListenerSets by their parent Gateway (byParent).
	byParent cache.Indexer
	// namespaces has the namespaces' labels, for allowedListeners
	// selectors.
	namespaces corev1listers.NamespaceLister
}

// byParent is the ListenerSet index of the Gateway a set's parentRef
// names, "namespace/name".
const byParent = "parent"

// listenerSetGroupVersion and listenerSetResource are the ListenerSet CRD
// as discovery serves it.
const (
	listenerSetGroupVersion = "gateway.networking.k8s.io/v1"
	listenerSetResource     = "listenersets"
)

// New checks opts and returns a Deployer.
func New(opts Options) (*Deployer, error) {
	if opts.Kube == nil || opts.Gateway == nil {
		return nil, errors.New("new deployer: Kube and Gateway clients are required")
	}
	if opts.Render.MeshdAddress == "" || opts.Render.TrustDomain == "" {
		return nil, errors.New("new deployer: Render.MeshdAddress and Render.TrustDomain are required")
	}
	if opts.Resync <= 0 {
		opts.Resync = 10 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Deployer{opts: opts, log: opts.Logger, now: time.Now,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[cache.ObjectName](),
			workqueue.TypedRateLimitingQueueConfig[cache.ObjectName]{Name: "meshlet-deployer"})}, nil
}

// Run watches Gateways, the Deployments and Services it made, the Gateways' parameters
// ConfigMaps and their classes' defaults, and ListenerSets and Namespaces (the labels allowedListeners
// selectors match), and reconciles until ctx ends. When discovery does not
// serve the ListenerSet CRD (Gateway API before v1.5), Run logs so once and
// runs without ListenerSets: ingress Services open their Gateways' own
// listener ports only, until the CRD is installed (discovery is asked
// again when the CRD changes and every CRDPoll: awaitListenerSets); then every ingress Gateway is
// reconciled again, with its ListenerSets.
func (d *Deployer) Run(ctx context.Context) error {
	defer d.queue.ShutDown()
	withSets, err := listenerSetsServed(d.opts.Kube)
	if err != nil {
		return err
	}
	if !withSets {
		d.log.Info("ListenerSets are not read: their CRD is not installed (Gateway API before v1.5); ingress gateways' Services open only their Gateways' listener ports until it is installed (meshd reads them then, no restart needed)",
			"missing", listenerSetResource+"."+gatewayv1.GroupName)
	}
	gf := gatewayinformers.NewSharedInformerFactory(d.opts.Gateway, d.opts.Resync)
	gwInf := gf.Gateway().V1().Gateways()
	d.gateways = gwInf.Lister()
	enqueue := func(obj any) {
		if gw, ok := obj.(*gatewayv1.Gateway); ok && ClassKind(gw.Spec.GatewayClassName) == KindNone {
			return
		}
		if key, err := cache.DeletionHandlingObjectToName(obj); err == nil {
			d.queue.Add(key)
		}
	}
	if _, err := gwInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return fmt.Errorf("watch gateways: %w", err)
	}
	// Deployment readiness drives Programmed.
	sel, err := labels.NewRequirement(GatewayNameLabel, selection.Exists, nil)
	if err != nil {
		return fmt.Errorf("deployment selector: %w", err)
	}
	kf := kubeinformers.NewSharedInformerFactoryWithOptions(d.opts.Kube, d.opts.Resync,
		kubeinformers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = labels.NewSelector().Add(*sel).String() }))
	onDeployment := func(obj any) {
		dep, ok := obj.(*appsv1.Deployment)
		if !ok {
			return
		}
		if gw := dep.Labels[GatewayNameLabel]; gw != "" {
			d.queue.Add(cache.ObjectName{Namespace: dep.Namespace, Name: gw})
		}
	}
	if _, err := kf.Apps().V1().Deployments().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onDeployment,
		UpdateFunc: func(_, obj any) { onDeployment(obj) },
	}); err != nil {
		return fmt.Errorf("watch deployments: %w", err)
	}
	// The Service's addresses drive status.addresses and, for the
	// addresses a Gateway requests, Programmed: a load balancer assigning
	// one, or the type changing, re-reads the Gateway's status.
	onService := func(old, obj any) {
		svc, ok := obj.(*corev1.Service)
		if !ok || svc.Labels[GatewayNameLabel] == "" {
			return
		}
		if o, ok := old.(*corev1.Service); ok && o.Spec.Type == svc.Spec.Type &&
			slices.Equal(o.Spec.ClusterIPs, svc.Spec.ClusterIPs) && reflect.DeepEqual(o.Status.LoadBalancer, svc.Status.LoadBalancer) {
			return
		}
		d.queue.Add(cache.ObjectName{Namespace: svc.Namespace, Name: svc.Labels[GatewayNameLabel]})
	}
	if _, err := kf.Core().V1().Services().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { onService(nil, obj) },
		UpdateFunc: onService,
	}); err != nil {
		return fmt.Errorf("watch services: %w", err)
	}
	// A Gateway's parameters ConfigMap changing re-renders the Gateway, a
	// class defaults ConfigMap every Gateway of its class. The cache keeps
	// ConfigMaps' names and ClassDefaultsLabel only: reconcile reads the
	// ones it needs; and Namespaces' names and labels only.
	cf := kubeinformers.NewSharedInformerFactoryWithOptions(d.opts.Kube, d.opts.Resync,
		kubeinformers.WithTransform(func(obj any) (any, error) {
			switch o := obj.(type) {
			case *corev1.ConfigMap:
				var l map[string]string
				if v, ok := o.Labels[ClassDefaultsLabel]; ok {
					l = map[string]string{ClassDefaultsLabel: v}
				}
				return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: o.Namespace, Labels: l, ResourceVersion: o.ResourceVersion}}, nil
			case *corev1.Namespace:
				return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.Name, Labels: o.Labels, ResourceVersion: o.ResourceVersion}}, nil
			}
			return obj, nil
		}))
	onConfigMap := func(obj any) {
		key, err := cache.DeletionHandlingObjectToName(obj)
		if err != nil {
			return
		}
		d.enqueueClasses(classDefaultsOf(d.opts.ClassDefaultsNamespace, obj)...)
		gws, err := d.gateways.Gateways(key.Namespace).List(labels.Everything())
		if err != nil {
			return
		}
		for _, gw := range gws {
			if name, err := ParamsConfigMap(gw); err == nil && name == key.Name && ClassKind(gw.Spec.GatewayClassName) != KindNone {
				d.queue.Add(cache.ObjectName{Namespace: gw.Namespace, Name: gw.Name})
			}
		}
	}
	if _, err := cf.Core().V1().ConfigMaps().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onConfigMap,
		UpdateFunc: func(old, obj any) {
			onConfigMap(obj)
			// The class it was the defaults of, when no longer.
			o, n := classDefaultsOf(d.opts.ClassDefaultsNamespace, old), classDefaultsOf(d.opts.ClassDefaultsNamespace, obj)
			if len(o) > 0 && !slices.Equal(o, n) {
				d.enqueueClasses(o...)
			}
		},
		DeleteFunc: onConfigMap,
	}); err != nil {
		return fmt.Errorf("watch configmaps: %w", err)
	}
	if withSets {
		// Stored before the caches sync: no worker runs until they have.
		sets, _, err := d.watchListenerSets(gf, cf)
		if err != nil {
			return err
		}
		d.sets.Store(sets)
	}
	gf.Start(ctx.Done())
	kf.Start(ctx.Done())
	cf.Start(ctx.Done())
	defer gf.Shutdown()
	defer kf.Shutdown()
	defer cf.Shutdown()
	// Before the Shutdowns: the ListenerSet poller starts informers of
	// gf and cf.
	var poller sync.WaitGroup
	defer poller.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for t, ok := range gf.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %v informer: %w", t, ctx.Err())
		}
	}
	for _, f := range []interface {
		WaitForCacheSync(<-chan struct{}) map[reflect.Type]bool
	}{kf, cf} {
		for t, ok := range f.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return fmt.Errorf("sync %v informer: %w", t, ctx.Err())
			}
		}
	}
	if !withSets {
		poller.Add(1)
		go func() {
			defer poller.Done()
			d.awaitListenerSets(ctx, gf, cf)
		}()
	}
	go func() {
		<-ctx.Done()
		d.queue.ShutDown()
	}()
	for d.next(ctx) {
	}
	return nil
}

// classDefaultsOf returns the class obj, a ConfigMap (or its tombstone),
// is the defaults of: its ClassDefaultsLabel when it is in namespace (not
// empty).
func classDefaultsOf(namespace string, obj any) []gatewayv1.ObjectName {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok || namespace == "" || cm.Namespace != namespace {
		return nil
	}
	if class, ok := cm.Labels[ClassDefaultsLabel]; ok {
		return []gatewayv1.ObjectName{gatewayv1.ObjectName(class)}
	}
	return nil
}

// enqueueClasses enqueues every Gateway of classes that are meshlet's.
func (d *Deployer) enqueueClasses(classes ...gatewayv1.ObjectName) {
	var gws []*gatewayv1.Gateway
	for _, class := range classes {
		if ClassKind(class) == KindNone {
			continue
		}
		if gws == nil {
			var err error
			if gws, err = d.gateways.List(labels.Everything()); err != nil {
				return
			}
		}
		for _, gw := range gws {
			if gw.Spec.GatewayClassName == class {
				d.queue.Add(cache.ObjectName{Namespace: gw.Namespace, Name: gw.Name})
			}
		}
	}
}

// awaitListenerSets waits for the ListenerSet CRD to be installed
// (Options.CRDs.WaitServed), then starts the ListenerSet and Namespace informers,
// waits for their caches, makes them what attachedListenerSets reads and
// enqueues every ingress Gateway, whose Services then open their sets'
// ports. It returns early when ctx ends.
func (d *Deployer) awaitListenerSets(ctx context.Context, gf gatewayinformers.SharedInformerFactory, cf kubeinformers.SharedInformerFactory) {
	if !d.opts.CRDs.WaitServed(ctx, d.crdPoll(), "the ListenerSet CRD", func() (bool, error) { return listenerSetsServed(d.opts.Kube) },
		listenerSetResource+"."+gatewayv1.GroupName) {
		return
	}
	d.log.Info("ListenerSet CRD installed: now read", "crd", listenerSetResource+"."+gatewayv1.GroupName)
	sets, synced, err := d.watchListenerSets(gf, cf)
	if err != nil {
		d.log.Error("ListenerSet CRD installed but not read", "err", err)
		return
	}
	// Start only the informers not started yet: these two.
	gf.Start(ctx.Done())
	cf.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return
	}
	d.sets.Store(sets)
	gws, err := d.gateways.List(labels.Everything())
	if err != nil {
		d.log.Error("list gateways to open their ListenerSets' ports", "err", err)
		return
	}
	for _, gw := range gws {
		if ClassKind(gw.Spec.GatewayClassName) == KindIngress {
			d.queue.Add(cache.ObjectName{Namespace: gw.Namespace, Name: gw.Name})
		}
	}
}

func (d *Deployer) crdPoll() time.Duration {
	if d.opts.CRDPoll > 0 {
		return d.opts.CRDPoll
	}
	return 30 * time.Second
}

// listenerSetsServed reports whether discovery serves the ListenerSet
// CRD.
func listenerSetsServed(kube kubernetes.Interface) (bool, error) {
	list, err := kube.Discovery().ServerResourcesForGroupVersion(listenerSetGroupVersion)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", listenerSetGroupVersion, err)
	}
	for _, r := range list.APIResources {
		if r.Name == listenerSetResource {
			return true, nil
		}
	}
	return false, nil
}

// watchListenerSets watches ListenerSets, indexed by parent: a set
// changing re-renders the Gateway it names, and the one it named before;
// and Namespaces (watchNamespaces). It returns their caches and what
// reports them synced; the factories start the informers.
func (d *Deployer) watchListenerSets(gf gatewayinformers.SharedInformerFactory, cf kubeinformers.SharedInformerFactory) (*listenerSetCaches, []cache.InformerSynced, error) {
	inf := gf.Gateway().V1().ListenerSets().Informer()
	if err := inf.AddIndexers(cache.Indexers{byParent: parentIndex}); err != nil {
		return nil, nil, fmt.Errorf("index listenersets: %w", err)
	}
	enqueueParent := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		ls, ok := obj.(*gatewayv1.ListenerSet)
		if !ok {
			return
		}
		if ns, name, ok := ListenerSetParent(ls); ok {
			d.queue.Add(cache.ObjectName{Namespace: ns, Name: name})
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueParent,
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*gatewayv1.ListenerSet)
			n, ok2 := obj.(*gatewayv1.ListenerSet)
			if ok1 && ok2 && o.Generation == n.Generation {
				return // status or metadata: no listener changed
			}
			enqueueParent(obj)
			if ok1 && ok2 {
				on, oname, _ := ListenerSetParent(o)
				nn, nname, _ := ListenerSetParent(n)
				if on != nn || oname != nname {
					enqueueParent(old)
				}
			}
		},
		DeleteFunc: enqueueParent,
	}); err != nil {
		return nil, nil, fmt.Errorf("watch listenersets: %w", err)
	}
	namespaces, nsSynced, err := d.watchNamespaces(cf)
	if err != nil {
		return nil, nil, err
	}
	return &listenerSetCaches{byParent: inf.GetIndexer(), namespaces: namespaces}, []cache.InformerSynced{inf.HasSynced, nsSynced}, nil
}

// parentIndex is the byParent index function.
func parentIndex(obj any) ([]string, error) {
	ls, ok := obj.(*gatewayv1.ListenerSet)
	if !ok {
		return nil, nil
	}
	if ns, name, ok := ListenerSetParent(ls); ok {
		return []string{ns + "/" + name}, nil
	}
	return nil, nil
}

// watchNamespaces caches Namespaces for their labels: a namespace's labels
// changing re-renders the ingress Gateways whose allowedListeners selects
// namespaces by label (all of them: a selector may stop or start matching).
func (d *Deployer) watchNamespaces(cf kubeinformers.SharedInformerFactory) (corev1listers.NamespaceLister, cache.InformerSynced, error) {
	nsInf := cf.Core().V1().Namespaces()
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Namespace)
			n, ok2 := obj.(*corev1.Namespace)
			if !ok1 || !ok2 || maps.Equal(o.Labels, n.Labels) {
				return
			}
			gws, err := d.gateways.List(labels.Everything())
			if err != nil {
				return
			}
			for _, gw := range gws {
				if ClassKind(gw.Spec.GatewayClassName) == KindIngress && listenersFromSelector(gw) {
					d.queue.Add(cache.ObjectName{Namespace: gw.Namespace, Name: gw.Name})
				}
			}
		},
	}); err != nil {
		return nil, nil, fmt.Errorf("watch namespaces: %w", err)
	}
	return nsInf.Lister(), nsInf.Informer().HasSynced, nil
}

// listenersFromSelector reports whether gw's allowedListeners admits
// namespaces by label.
func listenersFromSelector(gw *gatewayv1.Gateway) bool {
	a := gw.Spec.AllowedListeners
	return a != nil && a.Namespaces != nil && a.Namespaces.From != nil && *a.Namespaces.From == gatewayv1.NamespacesFromSelector
}

// attachedListenerSets returns the ListenerSets whose parentRef names gw
// and which gw admits, in merge order; none without the ListenerSet CRD.
// A set whose namespace is not (yet) in the cache is not admitted by a
// selector.
func (d *Deployer) attachedListenerSets(gw *gatewayv1.Gateway) ([]*gatewayv1.ListenerSet, error) {
	c := d.sets.Load()
	if c == nil {
		return nil, nil
	}
	objs, err := c.byParent.ByIndex(byParent, gw.Namespace+"/"+gw.Name)
	if err != nil {
		return nil, fmt.Errorf("list listenersets: %w", err)
	}
	var sets []*gatewayv1.ListenerSet
	for _, obj := range objs {
		ls, ok := obj.(*gatewayv1.ListenerSet)
		if !ok {
			continue
		}
		var nsLabels map[string]string
		if ns, err := c.namespaces.Get(ls.Namespace); err == nil {
			nsLabels = ns.Labels
		} else if listenersFromSelector(gw) {
			continue
		}
		if ListenerSetAllowed(gw, ls.Namespace, nsLabels) {
			sets = append(sets, ls)
		}
	}
	SortListenerSets(sets)
	return sets, nil
}

func (d *Deployer) next(ctx context.Context) bool {
	key, quit := d.queue.Get()
	if quit {
		return false
	}
	defer d.queue.Done(key)
	if err := d.reconcile(ctx, key); err != nil {
		d.log.Warn("deploy gateway; retrying", "gateway", key.String(), "err", err)
		d.queue.AddRateLimited(key)
		return true
	}
	d.queue.Forget(key)
	return true
}

// reconcile applies one Gateway's objects and status. A deleted Gateway
// needs nothing: the garbage collector removes what it owns.
func (d *Deployer) reconcile(ctx context.Context, key cache.ObjectName) error {
	gw, err := d.gateways.Gateways(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get gateway: %w", err)
	}
	if ClassKind(gw.Spec.GatewayClassName) == KindNone || gw.DeletionTimestamp != nil {
		return nil
	}
	var sets []*gatewayv1.ListenerSet
	if ClassKind(gw.Spec.GatewayClassName) == KindIngress {
		if sets, err = d.attachedListenerSets(gw); err != nil {
			return err
		}
	}
	apply := metav1.ApplyOptions{FieldManager: FieldManager, Force: true}
	params, err := d.params(ctx, gw)
	var objs *Objects
	if err == nil {
		objs, err = Render(gw, d.opts.Render, params, sets...)
	}
	var dep *appsv1.Deployment
	var svc *corev1.Service
	if err == nil {
		dep, svc, err = d.apply(ctx, gw, objs, params, apply)
	}
	var perr *ParamsError
	var aerr *AddressError
	if errors.As(err, &perr) || errors.As(err, &aerr) {
		var rejected error = aerr
		if perr != nil {
			if perr.invalid && params.Class != nil && params.Gateway != nil {
				// Refused with both overlays: the class defaults' fault when
				// they alone make an object refused.
				if cerr := d.classAloneInvalid(ctx, gw, params.Class, sets, apply); cerr != nil {
					perr = cerr
				}
			}
			rejected = perr
		}
		// Rejected: what was deployed stays as it was, and the Gateway
		// says why (its addresses still those of what runs).
		d.log.Warn("gateway rejected", "gateway", key.String(), "err", rejected)
		dep, svc = nil, nil
		if got, err := d.opts.Kube.AppsV1().Deployments(gw.Namespace).Get(ctx, gw.Name, metav1.GetOptions{}); err == nil {
			dep = got
		}
		if got, err := d.opts.Kube.CoreV1().Services(gw.Namespace).Get(ctx, gw.Name, metav1.GetOptions{}); err == nil {
			svc = got
		}
		if _, err := d.opts.Gateway.GatewayV1().Gateways(gw.Namespace).ApplyStatus(ctx, Status(gw, dep, svc, d.now(), rejected), apply); err != nil {
			return fmt.Errorf("apply gateway status: %w", err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := d.opts.Gateway.GatewayV1().Gateways(gw.Namespace).ApplyStatus(ctx, Status(gw, dep, svc, d.now(), nil), apply); err != nil {
		return fmt.Errorf("apply gateway status: %w", err)
	}
	return nil
}

// classAloneInvalid dry-runs the objects gw's class defaults make without
// its own parameters and returns the ParamsError of the class defaults
// when the API server refuses one, else nil.
func (d *Deployer) classAloneInvalid(ctx context.Context, gw *gatewayv1.Gateway, class *corev1.ConfigMap, sets []*gatewayv1.ListenerSet, opts metav1.ApplyOptions) *ParamsError {
	objs, err := Render(gw, d.opts.Render, Params{Class: class}, sets...)
	if err != nil {
		return nil
	}
	opts.DryRun = []string{metav1.DryRunAll}
	_, _, err = d.apply(ctx, gw, objs, Params{Class: class}, opts)
	var perr *ParamsError
	if errors.As(err, &perr) {
		return perr
	}
	return nil
}

// params returns gw's class defaults and the ConfigMap its parametersRef
// names (each nil when there is none), a *ParamsError when the reference
// names what is not there.
func (d *Deployer) params(ctx context.Context, gw *gatewayv1.Gateway) (Params, error) {
	class, err := d.classDefaults(ctx, gw.Spec.GatewayClassName)
	if err != nil {
		return Params{}, err
	}
	p := Params{Class: class}
	name, err := ParamsConfigMap(gw)
	if err != nil || name == "" {
		return p, err
	}
	cm, err := d.opts.Kube.CoreV1().ConfigMaps(gw.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return p, paramsErrorf(gw, "no such ConfigMap in namespace %s", gw.Namespace)
	}
	if err != nil {
		return p, fmt.Errorf("get parameters: %w", err)
	}
	p.Gateway = cm
	return p, nil
}

// classDefaults returns the class defaults ConfigMap of class
// (pickClassDefaults), nil when there is none or no namespace to read them
// from. Of several, it warns about the unused ones once per change.
func (d *Deployer) classDefaults(ctx context.Context, class gatewayv1.ObjectName) (*corev1.ConfigMap, error) {
	ns := d.opts.ClassDefaultsNamespace
	if ns == "" {
		return nil, nil
	}
	sel := labels.SelectorFromSet(labels.Set{ClassDefaultsLabel: string(class)})
	list, err := d.opts.Kube.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list class defaults of %s in %s: %w", class, ns, err)
	}
	cm, others := pickClassDefaults(list.Items, ns, class)
	d.warnSeveral(class, cm, others)
	return cm, nil
}

// warnSeveral warns that class has several class defaults ConfigMaps,
// used the one and not the others, unless it did for the same ones last.
func (d *Deployer) warnSeveral(class gatewayv1.ObjectName, used *corev1.ConfigMap, others []string) {
	d.warnedMu.Lock()
	defer d.warnedMu.Unlock()
	if len(others) == 0 {
		delete(d.warned, class)
		return
	}
	key := used.Name + " " + strings.Join(others, " ")
	if d.warned[class] == key {
		return
	}
	if d.warned == nil {
		d.warned = map[gatewayv1.ObjectName]string{}
	}
	d.warned[class] = key
	d.log.Warn("several class defaults ConfigMaps for one GatewayClass: the oldest is used, the others ignored",
		"class", class, "namespace", used.Namespace, "label", ClassDefaultsLabel, "used", used.Name, "ignored", others)
}

// apply server-side applies objs. With parameters (class defaults or the
// Gateway's own) merged in, an object the API server finds invalid is the
// parameters' fault: a *ParamsError (Params.invalid), found by a dry run of
// all of them before any is written, so that none changes.
func (d *Deployer) apply(ctx context.Context, gw *gatewayv1.Gateway, objs *Objects, params Params, opts metav1.ApplyOptions) (*appsv1.Deployment, *corev1.Service, error) {
	withParams := !params.empty()
	wrap := func(what string, err error) error {
		if withParams && apierrors.IsInvalid(err) {
			return params.invalid(gw, what, err)
		}
		return fmt.Errorf("apply %s: %w", what, err)
	}
	if withParams && len(opts.DryRun) == 0 {
		dry := opts
		dry.DryRun = []string{metav1.DryRunAll}
		if _, _, err := d.apply(ctx, gw, objs, params, dry); err != nil {
			return nil, nil, err
		}
	}
	if _, err := d.opts.Kube.CoreV1().ServiceAccounts(gw.Namespace).Apply(ctx, objs.ServiceAccount, opts); err != nil {
		return nil, nil, wrap("service account", err)
	}
	dep, err := d.opts.Kube.AppsV1().Deployments(gw.Namespace).Apply(ctx, objs.Deployment, opts)
	if err != nil {
		return nil, nil, wrap("deployment", err)
	}
	svc, err := d.opts.Kube.CoreV1().Services(gw.Namespace).Apply(ctx, objs.Service, opts)
	if err != nil {
		return nil, nil, wrap("service", err)
	}
	if err := applyOptional(ctx, gw, "horizontal pod autoscaler", objs.HorizontalPodAutoscaler, opts, wrap,
		typedClient[autoscalingv2ac.HorizontalPodAutoscalerApplyConfiguration, *autoscalingv2.HorizontalPodAutoscaler](
			d.opts.Kube.AutoscalingV2().HorizontalPodAutoscalers(gw.Namespace))); err != nil {
		return nil, nil, err
	}
	if err := applyOptional(ctx, gw, "pod disruption budget", objs.PodDisruptionBudget, opts, wrap,
		typedClient[policyv1ac.PodDisruptionBudgetApplyConfiguration, *policyv1.PodDisruptionBudget](
			d.opts.Kube.PolicyV1().PodDisruptionBudgets(gw.Namespace))); err != nil {
		return nil, nil, err
	}
	return dep, svc, nil
}

// typedClient is what applyOptional needs of a typed client: apply
// configurations A, objects O.
type typedClient[A any, O metav1.Object] interface {
	Apply(ctx context.Context, obj *A, opts metav1.ApplyOptions) (O, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (O, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
}

// applyOptional applies want, an object the Gateway's parameters may ask for
// (the autoscaler, the disruption budget); when they do not (want nil), it
// deletes the one of the Gateway's name if the Gateway controls it, one made
// for parameters that no longer ask for it. One made by someone else under
// the same name is left alone; a dry run deletes nothing.
func applyOptional[A any, O metav1.Object](ctx context.Context, gw *gatewayv1.Gateway, what string, want *A, opts metav1.ApplyOptions,
	wrap func(string, error) error, c typedClient[A, O]) error {
	if want != nil {
		if _, err := c.Apply(ctx, want, opts); err != nil {
			return wrap(what, err)
		}
		return nil
	}
	if len(opts.DryRun) > 0 {
		return nil
	}
	obj, err := c.Get(ctx, gw.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get %s: %w", what, err)
	}
	if !metav1.IsControlledBy(obj, gw) {
		return nil
	}
	uid := obj.GetUID()
	err = c.Delete(ctx, obj.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s no longer asked for: %w", what, err)
	}
	return nil
}

// Status is the Gateway status the deployer owns: Accepted, Programmed
// (once a waypoint pod is ready and the Service has every address
// spec.addresses requests: addresses.go) and the Service's addresses. A
// condition whose status did not change keeps its last transition time.
// status.listeners is not here: attachedRoutes is a fact about routes,
// which meshd's builder knows, so meshd's Gateway API status writer owns
// that field (controlplane listenerstatus.go) and this apply, which never
// names it, leaves it alone.
//
// rejected, when not nil, is why the Gateway cannot be deployed as it
// asks: Accepted False (UnsupportedAddress for an *AddressError,
// InvalidParameters for parameters or an annotation that cannot be used),
// Programmed False (Invalid), with the addresses of what still runs.
func Status(gw *gatewayv1.Gateway, dep *appsv1.Deployment, svc *corev1.Service, now time.Time, rejected error) *gatewayac.GatewayApplyConfiguration {
	cond := func(t gatewayv1.GatewayConditionType, ok bool, reason gatewayv1.GatewayConditionReason, msg string) *metav1ac.ConditionApplyConfiguration {
		st := metav1.ConditionFalse
		if ok {
			st = metav1.ConditionTrue
		}
		at := metav1.NewTime(now)
		for _, c := range gw.Status.Conditions {
			if c.Type == string(t) && c.Status == st {
				at = c.LastTransitionTime
			}
		}
		return metav1ac.Condition().WithType(string(t)).WithStatus(st).WithReason(string(reason)).
			WithMessage(msg).WithObservedGeneration(gw.Generation).WithLastTransitionTime(at)
	}
	podReady := dep != nil && dep.Status.ReadyReplicas > 0
	ready := podReady
	progMsg := "waypoint deployment has a ready replica"
	progReason := gatewayv1.GatewayReasonProgrammed
	if !ready {
		progMsg = "waiting for a ready waypoint pod"
		progReason = gatewayv1.GatewayReasonPending
	}
	if reason, msg := unbound(gw, svc); reason != "" {
		// The address outlasts a pod's start: said first.
		progReason, progMsg, ready = reason, msg, false
		if !podReady {
			progMsg += "; and waiting for a ready waypoint pod"
		}
	}
	accepted := cond(gatewayv1.GatewayConditionAccepted, true, gatewayv1.GatewayReasonAccepted, "resources deployed by meshlet")
	programmed := cond(gatewayv1.GatewayConditionProgrammed, ready, progReason, progMsg)
	if rejected != nil {
		reason, what := gatewayv1.GatewayReasonInvalidParameters, "parameters"
		if aerr := (*AddressError)(nil); errors.As(rejected, &aerr) {
			reason, what = gatewayv1.GatewayReasonUnsupportedAddress, "spec.addresses"
		}
		accepted = cond(gatewayv1.GatewayConditionAccepted, false, reason, rejected.Error())
		programmed = cond(gatewayv1.GatewayConditionProgrammed, false, gatewayv1.GatewayReasonInvalid,
			what+" rejected (see Accepted); what was deployed before is left as it was")
	}
	st := gatewayac.GatewayStatus().WithConditions(accepted, programmed)
	for _, a := range addresses(gw, svc) {
		st.WithAddresses(gatewayac.GatewayStatusAddress().WithType(a.typ).WithValue(a.value))
	}
	return gatewayac.Gateway(gw.Name, gw.Namespace).WithStatus(st)
}

type address struct {
	typ   gatewayv1.AddressType
	value string
}

// addresses: an ingress gateway's load balancer addresses when it has them,
// else the Service's cluster IPs.
func addresses(gw *gatewayv1.Gateway, svc *corev1.Service) []address {
	if svc == nil {
		return nil
	}
	var out []address
	if ClassKind(gw.Spec.GatewayClassName) == KindIngress {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			switch {
			case in.IP != "":
				out = append(out, address{gatewayv1.IPAddressType, in.IP})
			case in.Hostname != "":
				out = append(out, address{gatewayv1.HostnameAddressType, in.Hostname})
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip != corev1.ClusterIPNone {
			out = append(out, address{gatewayv1.IPAddressType, ip})
		}
	}
	return out
}
