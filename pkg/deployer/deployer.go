package deployer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayac "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"
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
}

// Deployer reconciles meshlet-class Gateways. Run it with Run.
type Deployer struct {
	opts     Options
	log      *slog.Logger
	queue    workqueue.TypedRateLimitingInterface[cache.ObjectName]
	gateways gatewaylisters.GatewayLister
	now      func() time.Time
}

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

// Run watches Gateways and the Deployments it made, and reconciles until ctx
// ends.
func (d *Deployer) Run(ctx context.Context) error {
	defer d.queue.ShutDown()
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
	gf.Start(ctx.Done())
	kf.Start(ctx.Done())
	defer gf.Shutdown()
	defer kf.Shutdown()
	for t, ok := range gf.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %v informer: %w", t, ctx.Err())
		}
	}
	for t, ok := range kf.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %v informer: %w", t, ctx.Err())
		}
	}
	go func() {
		<-ctx.Done()
		d.queue.ShutDown()
	}()
	for d.next(ctx) {
	}
	return nil
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
	objs, err := Render(gw, d.opts.Render)
	if err != nil {
		return err
	}
	apply := metav1.ApplyOptions{FieldManager: FieldManager, Force: true}
	if _, err := d.opts.Kube.CoreV1().ServiceAccounts(gw.Namespace).Apply(ctx, objs.ServiceAccount, apply); err != nil {
		return fmt.Errorf("apply service account: %w", err)
	}
	dep, err := d.opts.Kube.AppsV1().Deployments(gw.Namespace).Apply(ctx, objs.Deployment, apply)
	if err != nil {
		return fmt.Errorf("apply deployment: %w", err)
	}
	svc, err := d.opts.Kube.CoreV1().Services(gw.Namespace).Apply(ctx, objs.Service, apply)
	if err != nil {
		return fmt.Errorf("apply service: %w", err)
	}
	status := Status(gw, dep, svc, d.now())
	if _, err := d.opts.Gateway.GatewayV1().Gateways(gw.Namespace).ApplyStatus(ctx, status, apply); err != nil {
		return fmt.Errorf("apply gateway status: %w", err)
	}
	return nil
}

// Status is the Gateway status the deployer owns: Accepted, Programmed
// (once a waypoint pod is ready) and the Service's addresses. A condition
// whose status did not change keeps its last transition time.
// status.listeners is not here: attachedRoutes is a fact about routes,
// which meshd's builder knows, so meshd's Gateway API status writer owns
// that field (controlplane listenerstatus.go) and this apply, which never
// names it, leaves it alone.
func Status(gw *gatewayv1.Gateway, dep *appsv1.Deployment, svc *corev1.Service, now time.Time) *gatewayac.GatewayApplyConfiguration {
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
	ready := dep != nil && dep.Status.ReadyReplicas > 0
	progMsg := "waypoint deployment has a ready replica"
	progReason := gatewayv1.GatewayReasonProgrammed
	if !ready {
		progMsg = "waiting for a ready waypoint pod"
		progReason = gatewayv1.GatewayReasonPending
	}
	st := gatewayac.GatewayStatus().WithConditions(
		cond(gatewayv1.GatewayConditionAccepted, true, gatewayv1.GatewayReasonAccepted, "resources deployed by meshlet"),
		cond(gatewayv1.GatewayConditionProgrammed, ready, progReason, progMsg),
	)
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
