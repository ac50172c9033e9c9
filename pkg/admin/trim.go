package admin

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ReleaseStartupPages drops this process's page-table entries for its own
// executable's read-only segments (machine code and read-only data), so
// that its resident set holds what it runs from now on rather than
// everything start-up touched.
//
// Why: the Go runtime runs every linked package's init code and reads
// type and function tables all over the binary at start, and the kernel
// maps the neighbours of each faulted page too (fault-around, 64 KiB). A
// 45 MB agent ends up with ~27 MB of its binary mapped though its steady
// state uses a fraction of it. Those pages are clean and file-backed: after
// MADV_DONTNEED they stay in the page cache and the next use maps them
// again with a minor fault, so nothing is lost, nothing is read from disk.
//
// Only private mappings of the executable without write permission are
// touched: a written page of a private mapping (.data) would be lost.
// It returns the bytes of address space released.
func ReleaseStartupPages() (int64, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("release start-up pages: %w", err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("release start-up pages: %w", err)
	}
	defer f.Close()
	ranges, err := readOnlyMappings(f, exe)
	if err != nil {
		return 0, fmt.Errorf("release start-up pages: %w", err)
	}
	var released int64
	for _, r := range ranges {
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, r.start, r.end-r.start, unix.MADV_DONTNEED); errno != 0 {
			return released, fmt.Errorf("release start-up pages: madvise %#x-%#x: %w", r.start, r.end, errno)
		}
		released += int64(r.end - r.start)
	}
	return released, nil
}

type addrRange struct{ start, end uintptr }

// readOnlyMappings lists the private, non-writable mappings of path in a
// /proc/<pid>/maps listing ("start-end perms offset dev inode path").
func readOnlyMappings(r io.Reader, path string) ([]addrRange, error) {
	var out []addrRange
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 6 || fields[5] != path {
			continue
		}
		perms := fields[1]
		if len(perms) != 4 || perms[1] == 'w' || perms[3] != 'p' {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			return nil, fmt.Errorf("maps line %q: no address range", sc.Text())
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			return nil, fmt.Errorf("maps line %q: bad address range", sc.Text())
		}
		out = append(out, addrRange{uintptr(start), uintptr(end)})
	}
	return out, sc.Err()
}
