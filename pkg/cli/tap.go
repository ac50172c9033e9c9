package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshlet/meshlet/pkg/configdump"
)

// `meshctl tap`: the requests a waypoint or ingress gateway finishes, live,
// as Linkerd's tap shows them, from the proxy's loopback admin port
// (configdump.TapPath) through a port-forward. The proxy never sends
// headers or query strings; it bounds the taps (4 at once, 10000 events,
// 10 minutes) and drops events a slow reader cannot take (counted).

type tapFlags struct {
	namespace, method, authority, path, source, output string
	max                                                int
	duration                                           time.Duration
}

func newTapCommand(s Streams, g *globalOptions) *cobra.Command {
	var f tapFlags
	cmd := &cobra.Command{
		Use:   "tap <waypoint>",
		Short: "Watch the requests a waypoint or ingress gateway serves, live",
		Long: `Streams the requests a waypoint (or ingress gateway) finishes from now on,
one line each: when, client, service, method, authority, path (without its
query), status, latency, the endpoint that answered, route and response flags,
read from its admin port (loopback, through a port-forward), as Linkerd's tap.
Headers and query strings are never shown. It ends after --max requests or
--duration, or on Ctrl-C. <waypoint> is a pod name or a Gateway's name (then
one of its running pods). -o json prints the proxy's JSON lines.`,
		Example: `  meshctl tap waypoint -n shop
  meshctl tap waypoint -n shop --path /api --method POST --max 20
  meshctl tap ingress -n istio-ingress --authority shop.example.com -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case f.output != "" && f.output != "json":
				return fmt.Errorf("--output %q: want json or nothing", f.output)
			case f.max < 1 || f.max > 10000:
				return fmt.Errorf("--max %d: want 1 to 10000", f.max)
			case f.duration < time.Second || f.duration > 10*time.Minute:
				return fmt.Errorf("--duration %v: want 1s to 10m", f.duration)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ns := g.namespace(f.namespace)
			ctx, cancel := context.WithTimeout(ctxOf(cmd), f.duration+30*time.Second)
			defer cancel()
			pod, err := waypointPod(ctx, c, ns, args[0])
			if err != nil {
				return err
			}
			q := url.Values{"max": {strconv.Itoa(f.max)}, "seconds": {strconv.Itoa(int(f.duration / time.Second))}}
			for k, v := range map[string]string{"method": f.method, "authority": f.authority, "path": f.path, "source": f.source} {
				if v != "" {
					q.Set(k, v)
				}
			}
			fmt.Fprintf(s.ErrOut, "tapping %s/%s for %v or %d requests\n", pod.Namespace, pod.Name, f.duration, f.max)
			return c.adminDo(ctx, pod.Namespace, pod.Name, configdump.AdminPort, configdump.TapPath+"?"+q.Encode(), func(res *http.Response, where string) error {
				if res.StatusCode != http.StatusOK {
					b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
					return fmt.Errorf("tap %s: %s: %s", where, res.Status, b)
				}
				return printTap(res.Body, s.Out, s.ErrOut, f.output == "json")
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.namespace, "namespace", "n", "", "namespace of the waypoint"+nsUsage)
	fl.StringVar(&f.method, "method", "", "only requests with this method")
	fl.StringVar(&f.authority, "authority", "", "only requests with this Host/:authority, or for this service hostname")
	fl.StringVar(&f.path, "path", "", "only requests whose path starts with this")
	fl.StringVar(&f.source, "source", "", "only requests from this client (namespace/workload, as shown)")
	fl.IntVar(&f.max, "max", 100, "stop after this many requests (at most 10000)")
	fl.DurationVar(&f.duration, "duration", 30*time.Second, "stop after this long (at most 10m)")
	fl.StringVarP(&f.output, "output", "o", "", "json: the proxy's JSON lines")
	return cmd
}

// maxTapLine bounds one line of the tap stream.
const maxTapLine = 64 << 10

// printTap prints the tap stream in: one line per request on out (or the
// JSON lines as they come), the end on errOut.
func printTap(in io.Reader, out, errOut io.Writer, raw bool) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 4096), maxTapLine)
	for sc.Scan() {
		var l configdump.TapLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("tap stream: %w", err)
		}
		if e := l.End; e != nil {
			fmt.Fprintf(errOut, "tap ended (%s): %d requests shown, %d dropped (the reader was too slow)\n", e.Reason, e.Events, e.Dropped)
			if raw {
				fmt.Fprintln(out, sc.Text())
			}
			return nil
		}
		if l.Event == nil {
			continue
		}
		if raw {
			fmt.Fprintln(out, sc.Text())
			continue
		}
		fmt.Fprintln(out, tapText(l.Event))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("tap stream: %w", err)
	}
	return fmt.Errorf("tap stream ended without its end line (the proxy restarted, or the port-forward broke)")
}

// tapText is one request as a line, in Linkerd tap's key=value manner.
func tapText(e *configdump.TapEvent) string {
	status := strconv.Itoa(e.Status)
	if e.GRPCStatus != "" {
		status += " grpc-status=" + e.GRPCStatus
	}
	return fmt.Sprintf("%s src=%s dst=%s :method=%s :authority=%s :path=%s status=%s latency=%s upstream=%s route=%s flags=%s bytes=%d/%d",
		e.Time.Format("15:04:05.000"), dash(e.Source), dash(e.Destination), e.Method, e.Authority, e.Path, status,
		time.Duration(e.DurationMS*float64(time.Millisecond)).Round(10*time.Microsecond), dash(e.Upstream), dash(e.Route), e.Flags,
		e.RequestBytes, e.ResponseBytes)
}
