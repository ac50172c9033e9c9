package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/meshlet/meshlet/pkg/meshstatus"
)

// Some of meshd's work is done by one replica at a time, the holder of the
// Lease meshstatus.LeaderLease in meshd's namespace, as istiod leader-elects its
// gateway deployment controller and its status writers: deploying
// waypoints and gateways (pkg/deployer) and writing the status of Gateway
// API objects and ServiceEntries. With every replica doing it, each works
// from reads and builds of its own moment, so one a step behind writes the
// old objects or status after another wrote the new, until its next pass
// (seen in the lab: a Gateway whose parameters were just rejected read
// Accepted again for a moment). Serving xDS, signing certificates and
// publishing the root certificate stay on every replica.

// leaseTimes are a Lease's timings, kube-controller-manager's defaults: a
// replica that dies holding the Lease is replaced after at most duration;
// one that stops (SIGTERM) releases it and is replaced within retry.
type leaseTimes struct{ duration, renew, retry time.Duration }

var defaultLeaseTimes = leaseTimes{duration: 15 * time.Second, renew: 10 * time.Second, retry: 2 * time.Second}

// leaseIdentity is this replica's name in a Lease: the pod's name, which
// `kubectl get lease` then shows, and a random suffix that tells a
// restarted container from the one before it.
func leaseIdentity() string {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return meshstatus.LeaderIdentity(name, hex.EncodeToString(b[:]))
}

// runElected runs run while this replica holds the Lease ns/name, and
// campaigns again when it loses it, until ctx ends. A term's run gets a
// context that ends with the term; the next term's run starts only after
// it returned, so this replica never runs two. A run that fails gives the
// Lease up, so that another replica gets to try.
func runElected(ctx context.Context, kube kubernetes.Interface, ns, name, identity string, lt leaseTimes, log *slog.Logger, run func(context.Context) error) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: ns, Name: name},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	var running sync.Mutex // held by a term's run
	for ctx.Err() == nil {
		term, end := context.WithCancel(ctx)
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   lt.duration,
			RenewDeadline:   lt.renew,
			RetryPeriod:     lt.retry,
			ReleaseOnCancel: true,
			Name:            name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					running.Lock()
					defer running.Unlock()
					if lctx.Err() != nil {
						return // the term ended before its run started
					}
					log.Info("holding the lease: running", "lease", ns+"/"+name, "identity", identity)
					err := run(lctx)
					if lctx.Err() == nil {
						log.Error("stopped while holding the lease; giving it up", "lease", ns+"/"+name, "err", err)
						end()
					}
				},
				OnStoppedLeading: func() {},
			},
		})
		if err != nil { // only for a bad configuration, which is ours
			end()
			log.Error("leader election", "lease", ns+"/"+name, "err", err)
			return
		}
		le.Run(term)
		end()
		waitUnlocked(&running) // the term's run has returned
		if ctx.Err() == nil {
			log.Info("lost the lease; campaigning again", "lease", ns+"/"+name)
			select {
			case <-ctx.Done():
			case <-time.After(lt.retry):
			}
		}
	}
}

// waitUnlocked returns once mu is free: whoever held it is done.
func waitUnlocked(mu *sync.Mutex) {
	mu.Lock()
	defer mu.Unlock()
}
