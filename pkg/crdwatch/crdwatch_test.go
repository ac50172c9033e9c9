package crdwatch

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshlet/meshlet/pkg/testutil"
)

const listenerSets = "listenersets.gateway.networking.k8s.io"

func crd(name string) *metav1.PartialObjectMetadata {
	m := testutil.CRDMetadata(name)
	m.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 1000)}
	return m
}

// waitServed runs w.WaitServed for listenerSets in the background with
// served as the discovery answer and counts its calls.
func waitServed(ctx context.Context, w *Watcher, period time.Duration, served *atomic.Bool) (<-chan bool, *atomic.Int32) {
	calls := new(atomic.Int32)
	done := make(chan bool, 1)
	go func() {
		done <- w.WaitServed(ctx, period, "the ListenerSet CRD", func() (bool, error) {
			calls.Add(1)
			return served.Load(), nil
		}, listenerSets)
	}()
	return done, calls
}

// TestWaitServedOnInstall: with a poll far away, the CRD being installed
// makes WaitServed ask discovery at once; another CRD does not wake it.
func TestWaitServedOnInstall(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false") // the fake serves no watch-list
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := testutil.FakeMetadata(crd("widgets.example.com"))
	w := New(client, nil)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var served atomic.Bool
	done, calls := waitServed(ctx, w, time.Hour, &served)
	// Let the subscription and the informer's first list settle: the CRD
	// that exists is no wake-up for this waiter.
	time.Sleep(200 * time.Millisecond)
	testutil.InstallCRD(t, client, "gadgets.example.com")
	time.Sleep(200 * time.Millisecond)
	if n := calls.Load(); n != 0 {
		t.Errorf("discovery asked %d times for other CRDs; want 0", n)
	}

	served.Store(true)
	testutil.InstallCRD(t, client, listenerSets)
	select {
	case got := <-done:
		if !got {
			t.Error("WaitServed() = false after the CRD was installed; want true")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitServed() did not return within 5s of the CRD being installed (the poll is an hour away)")
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("discovery asked %d times; want once, when the CRD was installed", n)
	}
}

// TestWaitServedPolls: without a Watcher (or one that cannot watch) the
// periodic check finds nothing while the CRD is not served, returns true at
// the first check after it is, and false when ctx ends first.
func TestWaitServedPolls(t *testing.T) {
	const period = 5 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var served atomic.Bool
	var w *Watcher
	done, calls := waitServed(ctx, w, period, &served)
	for calls.Load() < 3 {
		time.Sleep(period)
	}
	select {
	case got := <-done:
		t.Fatalf("WaitServed() = %t before the CRD is served", got)
	default:
	}
	served.Store(true)
	select {
	case got := <-done:
		if !got {
			t.Error("WaitServed() = false after the CRD was served; want true")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitServed() did not return within 5s of the CRD being served")
	}

	t.Run("ctx ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if w.WaitServed(ctx, period, "x", func() (bool, error) { return false, errors.New("down") }, listenerSets) {
			t.Error("WaitServed() = true; want false once ctx ended")
		}
	})
}

// TestStartForbidden: a role that may not list CRDs gets an error naming
// the resource and the grant to add.
func TestStartForbidden(t *testing.T) {
	client := testutil.FakeMetadata()
	client.PrependReactor("list", "customresourcedefinitions", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(Resource.GroupResource(), "", errors.New("RBAC: no"))
	})
	err := New(client, nil).Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "customresourcedefinitions") || !strings.Contains(err.Error(), "grant meshd's ClusterRole get, list and watch") {
		t.Errorf("Start() = %v; want it to name the resource and the grant", err)
	}
}

// TestKeepName: what the informer keeps of a CRD is its name.
func TestKeepName(t *testing.T) {
	got, err := keepName(crd(listenerSets))
	if err != nil {
		t.Fatal(err)
	}
	m := got.(*metav1.PartialObjectMetadata)
	if m.Name != listenerSets || len(m.Annotations) != 0 {
		t.Errorf("kept %s with %d annotations; want the name alone", m.Name, len(m.Annotations))
	}
}
