package install

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/node-agent/cni"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func testOpts(t *testing.T) Options {
	t.Helper()
	return Options{ConfDir: t.TempDir(), BinDir: t.TempDir(), SocketPath: "/var/run/meshlet/cni.sock"}
}

// TestGolden installs into each testdata/*.conflist, compares the result with
// its .golden file, checks a second install changes nothing, and that
// uninstall gives back a file with meshlet-cni's entry gone and every other
// byte where it was.
func TestGolden(t *testing.T) {
	tests := []struct {
		file         string
		wantRestored string // uninstall result; empty means the input itself
	}{
		{file: "kindnet.conflist"},
		{file: "compact.conflist"},
		{file: "empty.conflist"},
		// meshlet-cni is moved to the end; uninstall removes it from there.
		{file: "ours-not-last.conflist", wantRestored: "ours-not-last.restored"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			opts := testOpts(t)
			path := filepath.Join(opts.ConfDir, "10-"+tt.file)
			if err := os.WriteFile(path, in, 0o600); err != nil {
				t.Fatal(err)
			}
			changed, err := Install(opts)
			if err != nil || !changed {
				t.Fatalf("Install() = %v, %v; want true, nil", changed, err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", strings.TrimSuffix(tt.file, ".conflist")+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("installed conflist:\n%s\nwant (%s):\n%s", got, golden, want)
			}
			if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
				t.Errorf("installed conflist mode = %v; want the original 0600", fi.Mode().Perm())
			}
			if changed, err := Install(opts); err != nil || changed {
				t.Errorf("second Install() = %v, %v; want false, nil (idempotent)", changed, err)
			}
			if err := Uninstall(opts); err != nil {
				t.Fatalf("Uninstall() = %v", err)
			}
			restored, _ := os.ReadFile(path)
			wantRestored := in
			if tt.wantRestored != "" {
				p := filepath.Join("testdata", tt.wantRestored)
				if *update {
					os.WriteFile(p, restored, 0o644)
				}
				wantRestored, _ = os.ReadFile(p)
			}
			if !bytes.Equal(restored, wantRestored) {
				t.Errorf("after Uninstall:\n%s\nwant:\n%s", restored, wantRestored)
			}
		})
	}
}

func TestInstallFirstConfigOnly(t *testing.T) {
	opts := testOpts(t)
	kindnet, _ := os.ReadFile("testdata/kindnet.conflist")
	compact, _ := os.ReadFile("testdata/compact.conflist")
	first := filepath.Join(opts.ConfDir, "10-kindnet.conflist")
	second := filepath.Join(opts.ConfDir, "20-other.conflist")
	os.WriteFile(first, kindnet, 0o644)
	os.WriteFile(second, compact, 0o644)
	os.WriteFile(filepath.Join(opts.ConfDir, "05-notes.txt"), []byte("not a config"), 0o644)

	bin := filepath.Join(t.TempDir(), "meshlet-cni")
	os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755)
	opts.Binary = bin
	if _, err := Install(opts); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(second); !bytes.Equal(got, compact) {
		t.Errorf("Install touched %s, which the runtime does not use", second)
	}
	if got, _ := os.ReadFile(first); !bytes.Contains(got, []byte(cni.PluginType)) {
		t.Errorf("Install did not add meshlet-cni to %s", first)
	}
	if fi, err := os.Stat(filepath.Join(opts.BinDir, cni.PluginType)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("plugin binary in bin dir: %v, %v; want mode 0755", fi, err)
	}

	// The cluster's CNI rewrites its file: the next Install puts us back.
	os.WriteFile(first, kindnet, 0o644)
	if changed, err := Install(opts); err != nil || !changed {
		t.Errorf("Install after rewrite = %v, %v; want true, nil", changed, err)
	}

	if err := Uninstall(opts); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(first); !bytes.Equal(got, kindnet) {
		t.Errorf("after Uninstall %s = \n%s\nwant the original", first, got)
	}
	if _, err := os.Stat(filepath.Join(opts.BinDir, cni.PluginType)); !os.IsNotExist(err) {
		t.Errorf("plugin binary still present after Uninstall: %v", err)
	}
}

func TestInstallErrors(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		wantErr string
	}{
		{name: "empty dir", wantErr: "no CNI network configuration"},
		{name: "single plugin conf", files: map[string]string{"10-bridge.conf": `{"cniVersion":"1.0.0","name":"b","type":"bridge"}`},
			wantErr: "single-plugin .conf"},
		{name: "broken json", files: map[string]string{"10-x.conflist": `{"name":"x","plugins":[{"type":"ptp"}`}, wantErr: "install meshlet-cni"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOpts(t)
			for name, body := range tt.files {
				os.WriteFile(filepath.Join(opts.ConfDir, name), []byte(body), 0o644)
			}
			_, err := Install(opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Install() = %v; want error containing %q", err, tt.wantErr)
			}
			for name, body := range tt.files {
				if got, _ := os.ReadFile(filepath.Join(opts.ConfDir, name)); string(got) != body {
					t.Errorf("failed Install changed %s", name)
				}
			}
		})
	}
}

// TestInstallKeepsBinaryCurrent: the plugin binary in the bin dir is put
// back whenever someone changes or replaces it, and polls that find it
// current neither rewrite it nor read it into memory.
func TestInstallKeepsBinaryCurrent(t *testing.T) {
	opts := testOpts(t)
	kindnet, _ := os.ReadFile("testdata/kindnet.conflist")
	os.WriteFile(filepath.Join(opts.ConfDir, "10-kindnet.conflist"), kindnet, 0o644)
	want := bytes.Repeat([]byte("meshlet-cni "), 700_000) // 8.4 MB, as the real one
	opts.Binary = filepath.Join(t.TempDir(), "meshlet-cni")
	os.WriteFile(opts.Binary, want, 0o755)
	dst := filepath.Join(opts.BinDir, cni.PluginType)
	install := func(step string) {
		t.Helper()
		if _, err := Install(opts); err != nil {
			t.Fatalf("%s: Install: %v", step, err)
		}
		if got, _ := os.ReadFile(dst); !bytes.Equal(got, want) {
			t.Fatalf("%s: plugin binary is %d bytes, not the agent's %d", step, len(got), len(want))
		}
	}
	install("first install")
	first, _ := os.Stat(dst)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		if _, err := Install(opts); err != nil {
			t.Fatalf("poll: Install: %v", err)
		}
	}
	runtime.ReadMemStats(&after)
	if got, _ := os.Stat(dst); !os.SameFile(first, got) {
		t.Errorf("polls rewrote an unchanged plugin binary")
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("10 polls allocated %d bytes: they read the binaries instead of checking them", alloc)
	}

	// Changed in place (same file, same size, other bytes).
	changed := bytes.Clone(want)
	copy(changed[len(changed)/2:], "XXXX")
	os.WriteFile(dst, changed, 0o755)
	install("after an in-place change")
	// Replaced by another file of the same size.
	other := filepath.Join(opts.BinDir, "other")
	os.WriteFile(other, changed, 0o755)
	os.Rename(other, dst)
	install("after a replacement")
	// Truncated, and removed.
	os.WriteFile(dst, want[:100], 0o755)
	install("after truncation")
	os.Remove(dst)
	install("after removal")
}
