package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meshlet/meshlet/test/apps/echo/echopb"
)

// Summary is what `echo client` prints: how many requests went where.
type Summary struct {
	Requests  int            `json:"requests"`
	OK        int            `json:"ok"`
	Failed    int            `json:"failed"`
	ByPod     map[string]int `json:"byPod"`     // answering pod -> count
	ByVersion map[string]int `json:"byVersion"` // answering version label -> count
	ByStatus  map[string]int `json:"byStatus"`  // HTTP code or gRPC code name -> count
	Errors    map[string]int `json:"errors,omitempty"`
	Protocols map[string]int `json:"protocols"` // protocol the server saw -> count
	// Seen counts the values the server saw of the -seen-header header
	// ("" when absent); Answered the values of the -answer-header header
	// of the responses.
	Seen     map[string]int `json:"seen,omitempty"`
	Answered map[string]int `json:"answered,omitempty"`
}

// clientOptions configure runClient.
type clientOptions struct {
	URL          string        // HTTP URL to GET; empty when GRPC is set
	GRPC         string        // gRPC host:port; empty for HTTP
	SeenHeader   string        // request header whose value the server saw is counted
	AnswerHeader string        // response header whose value is counted
	N            int           // number of requests (bounded to 100000)
	Concurrency  int           // parallel workers
	Timeout      time.Duration // per request
	H2C          bool          // HTTP/2 with prior knowledge instead of HTTP/1.1
	WebSocket    bool          // a WebSocket handshake and one echoed message per request
	Insecure     bool          // https without verifying the server (a test server's own certificate)
	Headers      http.Header   // extra request headers
}

type headerFlags http.Header

func (h headerFlags) String() string { return fmt.Sprint(http.Header(h)) }
func (h headerFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, ":")
	if !ok {
		return fmt.Errorf("header %q: want Name: value", v)
	}
	http.Header(h).Add(strings.TrimSpace(k), strings.TrimSpace(val))
	return nil
}

// runClient parses the client flags, makes the requests and prints a summary.
func runClient(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("echo client", flag.ContinueOnError)
	o := clientOptions{Headers: http.Header{}}
	fs.StringVar(&o.URL, "url", "", "HTTP URL to request, e.g. http://echo:8080/?delay=10ms")
	fs.StringVar(&o.GRPC, "grpc", "", "gRPC address to call instead, e.g. echo:9090")
	fs.IntVar(&o.N, "n", 10, "number of requests")
	fs.IntVar(&o.Concurrency, "c", 1, "concurrent requests")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Second, "per-request timeout")
	fs.BoolVar(&o.H2C, "h2c", false, "use HTTP/2 cleartext (prior knowledge)")
	fs.BoolVar(&o.WebSocket, "ws", false, "open a WebSocket to the URL (path /ws) and echo one message per request")
	fs.BoolVar(&o.Insecure, "k", false, "for https URLs, do not verify the server's certificate (a test server's own)")
	fs.Var(headerFlags(o.Headers), "H", "extra header 'Name: value' (repeatable)")
	fs.StringVar(&o.SeenHeader, "seen-header", "", "count the values of this request header as the server saw it")
	fs.StringVar(&o.AnswerHeader, "answer-header", "", "count the values of this response header")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 && o.URL == "" && o.GRPC == "" {
		o.URL = fs.Arg(0)
	}
	s, err := runRequests(ctx, o)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	printSummary(out, s)
	return nil
}

// runRequests makes o.N requests with o.Concurrency workers.
func runRequests(ctx context.Context, o clientOptions) (*Summary, error) {
	if (o.URL == "") == (o.GRPC == "") {
		return nil, errors.New("give exactly one of -url or -grpc")
	}
	if o.N <= 0 || o.N > 100000 {
		return nil, fmt.Errorf("-n %d: want 1-100000", o.N)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	var call func(context.Context) result
	if o.GRPC != "" {
		conn, err := grpc.NewClient(o.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("dial grpc %s: %w", o.GRPC, err)
		}
		defer conn.Close()
		c := echopb.NewEchoClient(conn)
		call = func(ctx context.Context) result { return grpcCall(ctx, c) }
	} else {
		hc := &http.Client{}
		if o.H2C {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			hc.Transport = &http.Transport{Protocols: &p, MaxIdleConnsPerHost: o.Concurrency}
		} else {
			hc.Transport = &http.Transport{MaxIdleConnsPerHost: o.Concurrency, TLSClientConfig: &tls.Config{InsecureSkipVerify: o.Insecure}}
		}
		defer hc.CloseIdleConnections()
		call = func(ctx context.Context) result { return httpCall(ctx, hc, &o) }
		if o.WebSocket {
			call = func(ctx context.Context) result { return wsCall(ctx, o.URL, o.Headers) }
		}
	}
	s := &Summary{ByPod: map[string]int{}, ByVersion: map[string]int{}, ByStatus: map[string]int{},
		Errors: map[string]int{}, Protocols: map[string]int{}}
	var mu sync.Mutex
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				rctx, cancel := context.WithTimeout(ctx, o.Timeout)
				r := call(rctx)
				cancel()
				mu.Lock()
				s.add(r)
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < o.N && ctx.Err() == nil; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	if len(s.Errors) == 0 {
		s.Errors = nil
	}
	return s, nil
}

// result is one request's outcome.
type result struct {
	ok       bool
	status   string
	pod      string
	version  string
	protocol string
	err      string
	// seen and answered are the -seen-header and -answer-header values;
	// counted when counted is set.
	seen, answered string
	counted        bool
}

func (s *Summary) add(r result) {
	s.Requests++
	if r.ok {
		s.OK++
	} else {
		s.Failed++
	}
	if r.status != "" {
		s.ByStatus[r.status]++
	}
	if r.err != "" {
		s.Errors[r.err]++
	}
	if r.pod != "" {
		s.ByPod[r.pod]++
		s.ByVersion[r.version]++
	}
	if r.protocol != "" {
		s.Protocols[r.protocol]++
	}
	if r.counted {
		if s.Seen == nil {
			s.Seen, s.Answered = map[string]int{}, map[string]int{}
		}
		s.Seen[r.seen]++
		s.Answered[r.answered]++
	}
}

func httpCall(ctx context.Context, hc *http.Client, o *clientOptions) result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.URL, nil)
	if err != nil {
		return result{err: err.Error()}
	}
	for k, v := range o.Headers {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return result{err: shortErr(err)}
	}
	defer resp.Body.Close()
	r := result{status: fmt.Sprint(resp.StatusCode), ok: resp.StatusCode < 400}
	var body Response
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&body); err == nil {
		r.pod, r.version, r.protocol = body.Pod, body.Version, body.Protocol
	}
	if o.SeenHeader != "" || o.AnswerHeader != "" {
		r.counted = true
		r.seen, r.answered = body.Headers[http.CanonicalHeaderKey(o.SeenHeader)], resp.Header.Get(o.AnswerHeader)
	}
	return r
}

func grpcCall(ctx context.Context, c echopb.EchoClient) result {
	resp, err := c.Echo(ctx, &echopb.EchoRequest{Message: "echo client"})
	if err != nil {
		st := status.Convert(err)
		return result{status: st.Code().String(), err: st.Message()}
	}
	return result{ok: true, status: "OK", pod: resp.GetPod(), version: resp.GetVersion(), protocol: resp.GetProtocol()}
}

// shortErr keeps the last part of a transport error so that errors group.
func shortErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		return msg[i+2:]
	}
	return msg
}

func printSummary(w io.Writer, s *Summary) {
	fmt.Fprintf(w, "requests %d ok %d failed %d\n", s.Requests, s.OK, s.Failed)
	for _, sec := range []struct {
		name string
		m    map[string]int
	}{{"status", s.ByStatus}, {"version", s.ByVersion}, {"pod", s.ByPod}, {"protocol", s.Protocols}, {"error", s.Errors}} {
		keys := make([]string, 0, len(sec.m))
		for k := range sec.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "%-8s %-40q %d\n", sec.name, k, sec.m[k])
		}
	}
}
