package admin

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryLimitRatio is the share of the container's memory limit given to
// the Go runtime as its soft limit: the rest covers what the runtime does
// not count (the binary's mapped pages, kernel buffers).
const memoryLimitRatio = 0.9

// cgroupMemoryFiles hold the container's memory limit: cgroup v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// memoryLimit works out the runtime's soft memory limit from --memory-limit:
// a size ("64MiB", "100000000"), "none", or "auto": nothing to set when
// $GOMEMLIMIT is set (the runtime has applied it), else memoryLimitRatio of
// the cgroup's limit, else none. It returns the limit (0: none to set) and
// where it came from.
func memoryLimit(v string, getenv func(string) string, readFile func(string) ([]byte, error)) (int64, string, error) {
	switch v {
	case "none":
		return 0, "none", nil
	case "auto", "":
		if getenv("GOMEMLIMIT") != "" {
			return 0, "$GOMEMLIMIT", nil
		}
		for _, f := range cgroupMemoryFiles {
			b, err := readFile(f)
			if err != nil {
				continue
			}
			n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err != nil || n <= 0 || n >= 1<<60 { // "max", or v1's "unlimited"
				return 0, "none (no cgroup memory limit)", nil
			}
			return int64(float64(n) * memoryLimitRatio), fmt.Sprintf("%.0f%% of %s", memoryLimitRatio*100, f), nil
		}
		return 0, "none (no cgroup memory limit)", nil
	}
	n, err := parseSize(v)
	if err != nil {
		return 0, "", fmt.Errorf("--memory-limit %q: %w", v, err)
	}
	return n, "--memory-limit", nil
}

// parseSize reads a byte count with an optional KiB, MiB or GiB suffix.
func parseSize(v string) (int64, error) {
	mult := int64(1)
	for _, s := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(v, s.suffix) {
			v, mult = strings.TrimSuffix(v, s.suffix), s.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("want a positive byte count, optionally with KiB, MiB or GiB, or auto or none")
	}
	return n * mult, nil
}

// MemoryLimitUsage is the help text of a --memory-limit flag.
const MemoryLimitUsage = "soft memory limit of the Go runtime (debug.SetMemoryLimit), above which it collects garbage harder instead of growing toward the pod's OOM kill: a size such as 64MiB; none; or auto: $GOMEMLIMIT if set, else 90% of the container's cgroup memory limit, else none"

// ApplyMemoryLimit sets the runtime's soft memory limit per a --memory-limit
// flag's value (see MemoryLimitUsage) and says where it came from.
func ApplyMemoryLimit(v string) (string, error) {
	n, from, err := memoryLimit(v, os.Getenv, os.ReadFile)
	if err != nil {
		return "", err
	}
	if n > 0 {
		debug.SetMemoryLimit(n)
	}
	return from, nil
}

// ApplyGCPercent sets the garbage collector's target percentage (GOGC) to
// def unless $GOGC is set (the runtime applied it already). It returns the
// value in force and where it came from. Why a binary's default differs
// from Go's 100 is said where it calls this.
func ApplyGCPercent(def int) (int, string) {
	return applyGCPercent(def, os.Getenv, debug.SetGCPercent)
}

func applyGCPercent(def int, getenv func(string) string, set func(int) int) (int, string) {
	if getenv("GOGC") != "" {
		// The runtime has applied it; read it back without changing it.
		cur := set(100)
		set(cur)
		return cur, "$GOGC"
	}
	set(def)
	return def, "default"
}
