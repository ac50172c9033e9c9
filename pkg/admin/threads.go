package admin

import (
	"fmt"
	"os"
	"runtime"
)

// WorkerThreadsUsage documents the --worker-threads flag.
const WorkerThreadsUsage = "how many threads run Go code at once (GOMAXPROCS); 0 means the runtime's default " +
	"(the container's CPU limit, else the node's cores); $GOMAXPROCS, when set, wins"

// ApplyWorkerThreads sets how many threads run Go code at once, unless
// $GOMAXPROCS is set (the runtime applied it already). n == 0 keeps the
// runtime's default. It returns the value in force and where it came from.
//
// Why a small number: a proxy at moderate load that may use every core
// spends much of its CPU on idle threads looking for work (spinning,
// futex wake-ups, sysmon), not on traffic. Measured on the lab at 1000
// requests/s (2 cores): GOMAXPROCS 1 instead of 2 cut the agent's CPU by
// ~30% and its futex calls tenfold, with lower latency and more
// single-stream throughput. Nodes with many busy pods raise it, as
// ztunnel's worker threads are raised.
func ApplyWorkerThreads(n int) (int, string, error) {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0), "$GOMAXPROCS", nil
	}
	switch {
	case n < 0:
		return 0, "", fmt.Errorf("--worker-threads %d: want 0 (the runtime's default) or more", n)
	case n == 0:
		return runtime.GOMAXPROCS(0), "the runtime's default", nil
	}
	runtime.GOMAXPROCS(n)
	return n, "--worker-threads", nil
}
