package admin

import (
	"context"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestReadOnlyMappings(t *testing.T) {
	const exe = "/opt/bin/node-agent"
	maps := `00400000-0118b000 r-xp 00000000 fe:00 9979199                            /opt/bin/node-agent
0118b000-02123000 r--p 00d8b000 fe:00 9979199                            /opt/bin/node-agent
02123000-021da000 rw-p 01d23000 fe:00 9979199                            /opt/bin/node-agent
021da000-021e0000 r--s 00000000 fe:00 9979199                            /opt/bin/node-agent
c000000000-c000400000 rw-p 00000000 00:00 0
7f8862000000-7f8862190000 r-xp 00026000 fe:00 326269                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f8863000000-7f8863100000 r-xp 00000000 fe:00 1                          /opt/bin/node-agent (deleted)
`
	got, err := readOnlyMappings(strings.NewReader(maps), exe)
	if err != nil {
		t.Fatal(err)
	}
	want := []addrRange{{0x400000, 0x118b000}, {0x118b000, 0x2123000}}
	if len(got) != len(want) {
		t.Fatalf("mappings = %#v; want only the executable's private read-only ones %#v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mapping %d = %#x; want %#x", i, got[i], want[i])
		}
	}

	if _, err := readOnlyMappings(strings.NewReader("zz-0118b000 r-xp 0 fe:00 1 /opt/bin/node-agent\n"), exe); err == nil ||
		!strings.Contains(err.Error(), "bad address range") {
		t.Errorf("a malformed line: err = %v; want a bad address range error", err)
	}
}

// rssFileKB reads this process's file-backed resident set from /proc.
func rssFileKB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("RssFile line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// The test binary's own start-up pages go: its file-backed resident set
// shrinks, and the process keeps running (code faults back in as used).
func TestReleaseBinaryPagesShrinksRSS(t *testing.T) {
	before := rssFileKB(t)
	released, err := ReleaseBinaryPages()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFileKB(t)
	if released == 0 {
		t.Fatal("released nothing: the test binary's code and read-only data mappings were not found")
	}
	if after >= before {
		t.Fatalf("RssFile %d kB before, %d kB after releasing %d bytes; want it smaller", before, after, released)
	}
	t.Logf("RssFile %d kB -> %d kB", before, after)
	// Still runs: something that was not touched since start-up.
	if _, err := readOnlyMappings(strings.NewReader(""), "x"); err != nil {
		t.Fatal(err)
	}
}

// After the start-up release a page the process uses again is read into
// the cache alone and mapped alone, not with the neighbours read-ahead
// brought in: the test does to a file of its own (on disk, cached whole,
// mapped privately read-only as an executable's code is) what the agent
// does to its binary, and counts what touching pages maps.
func TestReleaseUncachedMapsPageSized(t *testing.T) {
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		t.Skipf("%s is on tmpfs, whose pages cannot be dropped from the cache: set TMPDIR to a directory on disk", dir)
	}
	const size = 8 << 20
	path := dir + "/binary"
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(path); err != nil { // all of it cached
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	start := uintptr(unsafe.Pointer(&m[0]))
	addr := strconv.FormatUint(uint64(start), 16) + "-"

	const touches, stride = 16, 256 << 10
	page := os.Getpagesize()
	var sink byte
	touch := func(first int) int {
		before := smapsRssKB(t, addr)
		for i := 0; i < touches; i++ {
			sink += m[first*stride/2+i*stride+3*page]
		}
		return smapsRssKB(t, addr) - before
	}
	grewBefore := touch(0)
	released, err := releaseUncached([]addrRange{{start, start + size}}, path)
	if err != nil {
		t.Fatal(err)
	}
	if released != size {
		t.Fatalf("released %d bytes; want the mapping's %d", released, size)
	}
	grew := touch(1)
	t.Logf("%d pages touched: the mapping's Rss +%d kB with the file cached, +%d kB after the release (sink %d)", touches, grewBefore, grew, sink)
	if limit := touches * page >> 10; grew > limit {
		t.Errorf("touching %d pages after the release mapped %d kB; want at most %d kB (each page read and mapped alone)", touches, grew, limit)
	}
	if grewBefore <= grew {
		t.Errorf("touching %d pages of the cached file mapped %d kB, after the release %d kB; want fault-around to have mapped more before", touches, grewBefore, grew)
	}
}

// The start-up release finds the test binary's own code and read-only
// data and marks them for random access ("rr" in smaps).
func TestReleaseStartupPages(t *testing.T) {
	released, err := ReleaseStartupPages()
	if err != nil {
		t.Fatal(err)
	}
	if released == 0 {
		t.Fatal("released nothing: the test binary's code and read-only data mappings were not found")
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	code := false
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 6 && fields[5] == exe && fields[1] == "r-xp" {
			code = true
			continue
		}
		if code && strings.HasPrefix(line, "VmFlags:") {
			if !slices.Contains(fields[1:], "rr") {
				t.Errorf("the binary's code mapping has VmFlags %q after the start-up release; want rr (random access: no read-ahead)", line)
			}
			return
		}
	}
	t.Fatalf("no code mapping of %s in /proc/self/smaps", exe)
}

// smapsRssKB reads the Rss of the mapping that starts at addr ("7f12...-")
// from /proc/self/smaps.
func smapsRssKB(t *testing.T, addr string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	// The mapping's header line starts with its address; its first Rss
	// line after that is its own.
	_, rest, ok := strings.Cut("\n"+string(b), "\n"+addr)
	if !ok {
		t.Fatalf("no mapping at %s in /proc/self/smaps", addr)
	}
	for _, line := range strings.Split(rest, "\n") {
		if v, ok := strings.CutPrefix(line, "Rss:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("smaps line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no Rss line for the mapping at %s in /proc/self/smaps", addr)
	return 0
}

func TestApplyWorkerThreads(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	os.Unsetenv("GOMAXPROCS")
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })

	if n, from, err := ApplyWorkerThreads(1); err != nil || n != 1 || runtime.GOMAXPROCS(0) != 1 {
		t.Fatalf("ApplyWorkerThreads(1) = %d, %q, %v; GOMAXPROCS %d; want 1 in force", n, from, err, runtime.GOMAXPROCS(0))
	}
	if _, _, err := ApplyWorkerThreads(-2); err == nil || !strings.Contains(err.Error(), "--worker-threads -2") {
		t.Errorf("ApplyWorkerThreads(-2) error = %v; want one naming the flag and value", err)
	}
	runtime.GOMAXPROCS(orig)
	if n, _, err := ApplyWorkerThreads(0); err != nil || n != orig {
		t.Errorf("ApplyWorkerThreads(0) = %d, %v; want the runtime's default %d left alone", n, err, orig)
	}
	t.Setenv("GOMAXPROCS", "3")
	runtime.GOMAXPROCS(3)
	if n, from, _ := ApplyWorkerThreads(1); n != 3 || from != "$GOMAXPROCS" || runtime.GOMAXPROCS(0) != 3 {
		t.Errorf("with $GOMAXPROCS=3: ApplyWorkerThreads(1) = %d from %q, GOMAXPROCS %d; want $GOMAXPROCS to win", n, from, runtime.GOMAXPROCS(0))
	}
}

func TestParseStatmShared(t *testing.T) {
	for _, tc := range []struct {
		statm   string
		want    int64
		wantErr bool
	}{
		{statm: "1186 612 459 1021 0 140 0\n", want: 459 * 4096},
		{statm: "1 2 0", want: 0},
		{statm: "1186 612", wantErr: true},
		{statm: "1186 612 x 1021 0 140 0", wantErr: true},
		{statm: "1186 612 -3 1021 0 140 0", wantErr: true},
		{statm: "", wantErr: true},
	} {
		got, err := parseStatmShared(tc.statm, 4096)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseStatmShared(%q) = %d, %v; want %d, error %t", tc.statm, got, err, tc.want, tc.wantErr)
		}
	}
}

// Each check that finds the binary's mapped pages grown by minGrowth
// releases them: the test binary's mapped file pages shrink.
func TestTrimBinaryPagesReleasesGrowth(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type release struct{ before, after int64 }
	got := make(chan release, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		TrimBinaryPages(ctx, 5*time.Millisecond, 0, func(format string, args ...any) {
			if len(args) < 2 {
				t.Errorf("unexpected log: "+format, args...)
				return
			}
			select {
			case got <- release{args[0].(int64), args[1].(int64)}:
			default:
			}
		})
	}()
	select {
	case r := <-got:
		if r.after >= r.before {
			t.Errorf("mapped %d KiB of the binary before the release, %d KiB after; want fewer", r.before, r.after)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no release within 10s of 5ms checks with minGrowth 0")
	}
	cancel()
	<-done
}

// Growth below minGrowth releases nothing.
func TestTrimBinaryPagesWaitsForGrowth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	TrimBinaryPages(ctx, 5*time.Millisecond, 1<<40, func(format string, args ...any) {
		t.Errorf("released or failed though nothing grew by 1 TiB: "+format, args...)
	})
}
