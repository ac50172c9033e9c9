package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/meshlet/meshlet/node-agent/kube"
	"github.com/meshlet/meshlet/pkg/model"
)

// removeRedirection is `node-agent --remove-redirection-annotations`, the
// last step of `helm uninstall` (the chart's post-delete hook Job). Each
// agent, stopped by an uninstall, removes its data path, but not the status
// annotation it wrote on the pods it enrolled (ambient.istio.io/redirection:
// enabled), which Kiali, istioctl and scripts read as "in the mesh": Helm
// deletes the agents' RBAC with their DaemonSet, so the stopping agents may
// no longer write pods. This Job, with rights of its own, waits (at most
// wait) until no pod of the DaemonSet namespace/daemonSet is left to write
// the annotation again, then removes it from every pod that carries it, as
// `meshctl uninstall` does. A pod whose annotation changed since it was
// listed keeps it (resourceVersion precondition). It returns how many it
// removed; an error names the pods it could not change.
func removeRedirection(ctx context.Context, c *kube.Client, namespace, daemonSet string, wait time.Duration) (int, error) {
	deadline := time.Now().Add(wait)
	for {
		left, err := agentPods(ctx, c, namespace, daemonSet)
		if err != nil {
			return 0, err
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			log.Printf("%d pods of DaemonSet %s/%s still there after %s: removing the annotations anyway (a pod they still enroll gets its annotation back)", left, namespace, daemonSet, wait)
			break
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	n := 0
	var errs []error
	err := eachPod(ctx, c, "", func(p *kube.Pod) {
		if p.Annotations[model.AnnotationRedirection] != model.AnnotationRedirectionEnabled {
			return
		}
		err := c.AnnotatePod(ctx, p.Namespace, p.Name, p.ResourceVersion, model.AnnotationRedirection, nil)
		switch {
		case err == nil:
			n++
			log.Printf("removed annotation %s from pod %s/%s", model.AnnotationRedirection, p.Namespace, p.Name)
		case apierrors.IsNotFound(err), apierrors.IsConflict(err):
			// Gone, or changed since the list: left as it is now.
		case len(errs) < 10:
			errs = append(errs, fmt.Errorf("remove annotation %s from pod %s/%s: %w", model.AnnotationRedirection, p.Namespace, p.Name, err))
		}
	})
	if err != nil {
		return n, fmt.Errorf("list pods for their %s annotation: %w (the Job's ClusterRole lets it list pods)", model.AnnotationRedirection, err)
	}
	return n, errors.Join(errs...)
}

// agentPods counts the pods of namespace that DaemonSet daemonSet owns.
func agentPods(ctx context.Context, c *kube.Client, namespace, daemonSet string) (int, error) {
	n := 0
	err := eachPod(ctx, c, namespace, func(p *kube.Pod) {
		for _, o := range p.OwnerReferences {
			if o.Kind == "DaemonSet" && o.Name == daemonSet {
				n++
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("list the pods of DaemonSet %s/%s: %w", namespace, daemonSet, err)
	}
	return n, nil
}

// eachPod calls f with every pod of namespace ("": all), a page of 500 at
// a time.
func eachPod(ctx context.Context, c *kube.Client, namespace string, f func(*kube.Pod)) error {
	cont := ""
	for {
		pods, err := c.ListPods(ctx, namespace, cont, 500)
		if err != nil {
			return err
		}
		for i := range pods.Items {
			f(&pods.Items[i])
		}
		if pods.Continue == "" {
			return nil
		}
		cont = pods.Continue
	}
}

// runRemoveRedirection runs removeRedirection for the flags, for at most
// 150 s (the chart's Job gives it 180), waiting at most 90 s for the agents
// to go (their drain and termination grace: 30 s and 45 s by default).
func runRemoveRedirection(f flags) error {
	if f.namespace == "" || f.daemonSetName == "" {
		return errors.New("no --namespace (or POD_NAMESPACE) and --daemonset-name: the node agents' DaemonSet must be named")
	}
	c, err := kubeClient(f.kubeconfig)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	n, err := removeRedirection(ctx, c, f.namespace, f.daemonSetName, 90*time.Second)
	log.Printf("removed annotation %s from %d pods", model.AnnotationRedirection, n)
	return err
}
