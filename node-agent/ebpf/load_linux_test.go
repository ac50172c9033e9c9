package ebpf

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/meshlet/meshlet/node-agent/netns"
)

// TestManyConnections runs a bounded burst of captured connections from
// several goroutines and checks that every one is counted once and that no
// map entry outlives them.
func TestManyConnections(t *testing.T) {
	s := newSetup(t, Options{})
	const (
		wl      = 11
		conns   = 200
		workers = 8
		payload = 10
	)
	pod := newNetns(t, "many")
	cookie, err := NetnsCookie(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dp.Enroll(cookie, Pod{WorkloadID: wl}); err != nil {
		t.Fatal(err)
	}
	ln := listen(t, pod, "127.0.0.1:15001", agentMark)
	var lookups sync.WaitGroup
	lookupErrs := make(chan error, conns)
	go func() { // the agent: look up, read the payload, close
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			lookups.Add(1)
			go func() {
				defer lookups.Done()
				defer c.Close()
				if _, err := s.dp.OriginalDst(c); err != nil {
					lookupErrs <- err
				}
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()

	deadline := time.Now().Add(60 * time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < conns && time.Now().Before(deadline); i += workers {
				c, err := netns.Dial(context.Background(), pod, remoteIP+":8080", netns.DialOptions{Timeout: 3 * time.Second})
				if err != nil {
					errs <- err
					return
				}
				_, err = c.Write(make([]byte, payload))
				c.Close()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	eventually(t, "every connection counted closed", func() bool {
		return s.statsOf(t, wl).ConnsClosed == conns
	})
	lookups.Wait()
	close(lookupErrs)
	for err := range lookupErrs {
		t.Errorf("OriginalDst: %v", err)
	}
	st := s.statsOf(t, wl)
	if st.ConnsOpened != conns || st.CapturedTCP != conns || st.BytesSent != conns*payload || st.BytesReceived != 0 {
		t.Errorf("stats after %d connections of %d bytes: %+v", conns, payload, st)
	}
	eventually(t, "ml_origdst and ml_sock_dst to empty", func() bool {
		return s.count(t, s.dp.maps.MlOrigdst) == 0 && s.count(t, s.dp.maps.MlSockDst) == 0
	})
}
