package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// toolBinaries are the upstream programs built from test/go.mod.
var toolBinaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"}

// productBinaries are built from the product module's ./cmd at every up; a
// missing ./cmd/<name> is skipped.
var productBinaries = []string{"meshd", "node-agent", "waypoint", "meshlet-cni"}

// debianImages maps upstream images to the Debian binaries that stand for
// them in the lab (installed by make deps); a missing binary is left out.
var debianImages = map[string]string{
	"prom/prometheus":               "/usr/bin/prometheus",
	"quay.io/prometheus/prometheus": "/usr/bin/prometheus",
}

// testApps lists test/apps/<name> directories holding a main package; each
// is built to .lab/bin/<name> and served as the image meshlet.dev/<name>.
func testApps(l Layout) ([]string, error) {
	dir := filepath.Join(l.Repo(), "test", "apps")
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("list test apps in %s: %w", dir, err)
	}
	var apps []string
	for _, e := range ents {
		if e.IsDir() && exists(filepath.Join(dir, e.Name(), "main.go")) {
			apps = append(apps, e.Name())
		}
	}
	return apps, nil
}

// CacheDir is where built upstream binaries are kept across labs:
// $MESHLET_CACHE/lab, default ~/.cache/meshlet/lab.
func CacheDir() (string, error) {
	if d := os.Getenv("MESHLET_CACHE"); d != "" {
		return filepath.Join(d, "lab"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the home directory for the build cache (or set MESHLET_CACHE): %w", err)
	}
	return filepath.Join(home, ".cache", "meshlet", "lab"), nil
}

// toolsKey is a short hash of the pinned versions: test/go.sum, the CoreDNS
// module's go.sum and the Go version.
func toolsKey(repo string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"test/go.sum", "test/tools/coredns/go.sum", "test/tools/coredns/main.go"} {
		b, err := os.ReadFile(filepath.Join(repo, f))
		if err != nil {
			return "", fmt.Errorf("hash pinned versions: %w", err)
		}
		h.Write(b)
	}
	out, err := exec.Command("go", "version").Output()
	if err != nil {
		return "", fmt.Errorf("run go version (is Go installed and on PATH?): %w", err)
	}
	h.Write(out)
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// ensureTools returns the cache dir holding the upstream binaries, building
// them when any is missing. A warm cache never rebuilds.
func ensureTools(repo string, progress io.Writer) (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	key, err := toolsKey(repo)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(cache, key, "bin")
	var missing []string
	for _, b := range append(toolBinaries, "coredns") {
		if !exists(filepath.Join(bin, b)) {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return bin, nil
	}
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", fmt.Errorf("create build cache: %w", err)
	}
	// Binaries are built beside bin and renamed into it, each whole: a
	// build killed half way (a CI job at its time limit) leaves no
	// truncated binary that the next run would take for a built one.
	tmp, err := os.MkdirTemp(filepath.Dir(bin), "build-")
	if err != nil {
		return "", fmt.Errorf("create build dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	var pkgs []string
	for _, m := range missing {
		if m != "coredns" {
			pkgs = append(pkgs, "k8s.io/kubernetes/cmd/"+m)
		}
	}
	if len(pkgs) > 0 {
		fmt.Fprintf(progress, "building %s into %s (cold build: several minutes)\n", strings.Join(pkgs, " "), bin)
		if err := goBuild(filepath.Join(repo, "test"), tmp, progress, pkgs...); err != nil {
			return "", err
		}
	}
	if slices.Contains(missing, "coredns") {
		fmt.Fprintf(progress, "building coredns into %s\n", bin)
		if err := goBuild(filepath.Join(repo, "test/tools/coredns"), filepath.Join(tmp, "coredns"), progress, "."); err != nil {
			return "", err
		}
	}
	for _, m := range missing {
		if err := os.Rename(filepath.Join(tmp, m), filepath.Join(bin, m)); err != nil {
			return "", fmt.Errorf("move the built %s into the cache: %w", m, err)
		}
	}
	return bin, nil
}

// ProductBuildTags are the build tags meshlet's own binaries are built
// with, here and in the Makefile. grpcnotrace leaves out grpc's
// golang.org/x/net/trace and with it text/template, whose reflective
// method calls stop the linker from dropping unused methods: the node
// agent is 10 MB smaller without it, and that much less of the binary is
// mapped into its resident set.
const ProductBuildTags = "grpcnotrace"

// ProductBuildEnv is the environment meshlet's own binaries are built with,
// here and in the Makefile: no cgo, so they are static. meshlet-cni runs
// on the node's host with whatever C library it has, and a static agent
// maps no libc (about 1.5 MB less resident on every node); nothing in
// meshlet needs cgo (the pure-Go DNS resolver and user lookups do).
var ProductBuildEnv = []string{"CGO_ENABLED=0"}

// goBuild runs go build -o out pkgs... in dir.
func goBuild(dir, out string, progress io.Writer, pkgs ...string) error {
	return goBuildTags(dir, out, "", nil, progress, pkgs...)
}

// goBuildTags runs go build -tags tags -o out pkgs... in dir, with env
// added to the environment.
func goBuildTags(dir, out, tags string, env []string, progress io.Writer, pkgs ...string) error {
	args := []string{"build", "-o", out}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	args = append(args, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.Stdout = progress
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s in %s: %w", strings.Join(pkgs, " "), dir, err)
	}
	return nil
}

// buildLocal builds the product binaries and the test apps into .lab/bin,
// links the cached upstream binaries there and writes .lab/images.json.
// Go's build cache makes this fast when nothing changed.
func buildLocal(l Layout, tools string, progress io.Writer) (map[string]string, error) {
	bin := l.Path("bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", bin, err)
	}
	for _, t := range append(toolBinaries, "coredns") {
		dst := filepath.Join(bin, t)
		_ = os.Remove(dst)
		if err := os.Symlink(filepath.Join(tools, t), dst); err != nil {
			return nil, fmt.Errorf("link %s: %w", dst, err)
		}
	}
	var pkgs []string
	for _, p := range productBinaries {
		if exists(filepath.Join(l.Repo(), "cmd", p)) {
			pkgs = append(pkgs, "./cmd/"+p)
		}
	}
	if len(pkgs) > 0 {
		fmt.Fprintf(progress, "building %s\n", strings.Join(pkgs, " "))
		if err := goBuildTags(l.Repo(), bin+"/", ProductBuildTags, ProductBuildEnv, progress, pkgs...); err != nil {
			return nil, err
		}
	}
	apps, err := testApps(l)
	if err != nil {
		return nil, err
	}
	for _, a := range apps {
		fmt.Fprintf(progress, "building test/apps/%s\n", a)
		if err := goBuild(filepath.Join(l.Repo(), "test"), filepath.Join(bin, a), progress, "./apps/"+a); err != nil {
			return nil, err
		}
	}
	images := map[string]string{
		"registry.k8s.io/coredns/coredns": filepath.Join(bin, "coredns"),
		"registry.k8s.io/kube-proxy":      filepath.Join(bin, "kube-proxy"),
	}
	for _, p := range append(productBinaries, apps...) {
		if exists(filepath.Join(bin, p)) {
			images["meshlet.dev/"+p] = filepath.Join(bin, p)
		}
	}
	// Programs Debian packages stand in for their upstream images.
	for img, path := range debianImages {
		if exists(path) {
			images[img] = path
		}
	}
	b, err := json.MarshalIndent(images, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode image table: %w", err)
	}
	if err := os.WriteFile(l.Path("images.json"), b, 0o644); err != nil {
		return nil, fmt.Errorf("write image table: %w", err)
	}
	return images, nil
}

// Build rebuilds the product binaries and test apps of a lab's checkout into
// .lab/bin and rewrites its image table, so pods started from now on run the
// tree as it is (a running pod keeps the binary it started with; restart it
// to pick up the new one). The upstream binaries come from the cache.
func Build(l Layout, progress io.Writer) error {
	tools, err := ensureTools(l.Repo(), progress)
	if err != nil {
		return err
	}
	_, err = buildLocal(l, tools, progress)
	return err
}
