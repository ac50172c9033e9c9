package admin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ReleaseBinaryPages drops this process's page-table entries for its own
// executable's read-only segments (machine code and read-only data), so
// that its resident set holds what it runs from now on rather than
// everything start-up (or, later, rare code: TrimBinaryPages) touched.
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
func ReleaseBinaryPages() (int64, error) {
	ranges, err := binaryMappings()
	if err != nil {
		return 0, fmt.Errorf("release the binary's pages: %w", err)
	}
	released, err := madviseAll(ranges, unix.MADV_DONTNEED)
	if err != nil {
		return released, fmt.Errorf("release the binary's pages: %w", err)
	}
	return released, nil
}

// ReleaseStartupPages is ReleaseBinaryPages for the end of start-up, and it
// also makes what the process maps of its binary from then on page-sized:
// it marks the binary's read-only mappings for random access (no
// read-ahead) and drops the executable's page cache that nothing maps
// (POSIX_FADV_DONTNEED), so each page the process runs next is read into
// the cache alone and mapped alone.
//
// Why: on file systems with large folios (XFS, recent ext4) a file that
// was written or read in sequence sits in the page cache in folios of up
// to megabytes, and a fault on one page maps its whole folio (Linux 6.18:
// 16 touches of such a file mapped 4 MB). The node agent's steady state
// held 12.6 MB of its binary mapped that way, 6.6-9.2 MB after this
// release (bench-datapath, 50 pods). Pages read one at a time stay 4 KiB
// folios, and fault-around maps only the neighbours already cached.
// The cost is one read of each page the process uses again (from the disk
// or the image layer's cache), once; pages other processes still map are
// left cached as they are. Later trims (ReleaseBinaryPages) keep the cache.
func ReleaseStartupPages() (int64, error) {
	ranges, err := binaryMappings()
	if err != nil {
		return 0, fmt.Errorf("release the binary's start-up pages: %w", err)
	}
	// /proc/self/exe opens the file this process runs even when its path
	// was replaced or removed (a rolling update on a host path).
	released, err := releaseUncached(ranges, "/proc/self/exe")
	if err != nil {
		return released, fmt.Errorf("release the binary's start-up pages: %w", err)
	}
	return released, nil
}

// releaseUncached marks the ranges, mappings of the file at path, for
// random access, unmaps their pages and drops the file's pages that
// nothing maps from the page cache.
func releaseUncached(ranges []addrRange, path string) (int64, error) {
	if _, err := madviseAll(ranges, unix.MADV_RANDOM); err != nil {
		return 0, err
	}
	released, err := madviseAll(ranges, unix.MADV_DONTNEED)
	if err != nil {
		return released, err
	}
	f, err := os.Open(path)
	if err != nil {
		return released, err
	}
	defer f.Close()
	// A binary written lately (a build, a copy onto the node) may still
	// have dirty pages, which the kernel does not drop: write them first.
	// Clean files, and file systems that cannot sync a read-only file,
	// make this a no-op, so its error is not one.
	_ = unix.Fdatasync(int(f.Fd()))
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return released, fmt.Errorf("drop %s from the page cache: %w", path, err)
	}
	return released, nil
}

// binaryMappings lists this process's private read-only mappings of its
// own executable.
func binaryMappings() ([]addrRange, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return nil, err
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readOnlyMappings(f, exe)
}

// madviseAll gives advice to every range and returns the bytes advised.
func madviseAll(ranges []addrRange, advice int) (int64, error) {
	var n int64
	for _, r := range ranges {
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, r.start, r.end-r.start, uintptr(advice)); errno != 0 {
			return n, fmt.Errorf("madvise(%d) %#x-%#x: %w", advice, r.start, r.end, errno)
		}
		n += int64(r.end - r.start)
	}
	return n, nil
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

// TrimBinaryPages keeps the executable's pages mapped into this process to
// what it has run lately: every interval it reads how much of the binary is
// mapped and, when that grew by minGrowth bytes or more since the last
// release, releases the mappings again (ReleaseBinaryPages). It returns
// when ctx ends.
//
// Why: start-up is not the only time rare code runs. Enrolling a burst of
// pods (eBPF attachment, netlink, certificates), a config push, a
// certificate renewal or a scrape of the debug endpoints each map code and
// read-only data that the steady state does not use again, and the
// runtime's stack scans map a 64 KiB neighbourhood of every function table
// they read. Without a release those mappings stay for the life of the
// process and the resident set creeps toward the whole binary. The pages
// stay in the page cache: what the agent runs next is mapped again with a
// minor fault (a few hundred per release, well under a millisecond), and
// under memory pressure the kernel can drop what nothing maps, where it
// would first have to unmap it. logf, when not nil, hears the first
// release and any error once.
func TrimBinaryPages(ctx context.Context, interval time.Duration, minGrowth int64, logf func(format string, args ...any)) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	last, err := mappedFileBytes()
	if err != nil {
		logf("%v; the binary's mapped pages are not trimmed", err)
		return
	}
	first := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now, err := mappedFileBytes()
		if err != nil {
			logf("%v; the binary's mapped pages are no longer trimmed", err)
			return
		}
		if now-last < minGrowth {
			continue
		}
		if _, err := ReleaseBinaryPages(); err != nil {
			logf("%v; the binary's mapped pages are no longer trimmed", err)
			return
		}
		if last, err = mappedFileBytes(); err != nil {
			logf("%v; the binary's mapped pages are no longer trimmed", err)
			return
		}
		if first {
			logf("trimming the binary's mapped pages: %d KiB mapped before this release, %d KiB after; checked every %s", now>>10, last>>10, interval)
			first = false
		}
	}
}

// mappedFileBytes returns the file-backed pages mapped into this process
// (the third field of /proc/self/statm, shared pages: mostly the binary's,
// as the agent maps no other file of size), in bytes.
func mappedFileBytes() (int64, error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, fmt.Errorf("read mapped pages: %w", err)
	}
	return parseStatmShared(string(b), int64(os.Getpagesize()))
}

// parseStatmShared reads the shared (file-backed) page count of a
// /proc/<pid>/statm line ("size resident shared text lib data dt") and
// returns it in bytes.
func parseStatmShared(statm string, pageSize int64) (int64, error) {
	fields := strings.Fields(statm)
	if len(fields) < 3 {
		return 0, fmt.Errorf("read mapped pages: statm %q: want at least 3 fields", statm)
	}
	pages, err := strconv.ParseInt(fields[2], 10, 64)
	if err != nil || pages < 0 {
		return 0, fmt.Errorf("read mapped pages: statm %q: bad shared page count", statm)
	}
	return pages * pageSize, nil
}
