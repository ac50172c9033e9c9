// Package install puts meshlet-cni into a node's CNI configuration and takes
// it out again.
//
// Install appends meshlet-cni's entry to the plugins of the FIRST network
// configuration in the conf dir (the one the runtime uses: lexical order of
// *.conf, *.conflist, *.json, as libcni sorts them), atomically, leaving every
// other byte of the file as it was, and copies the plugin binary into the bin
// dir. It is idempotent, so Watch simply re-runs it when the cluster's CNI
// rewrites its file. Uninstall removes exactly the entry it added.
//
// It must not touch any file but the first conflist and its own binary, and
// it refuses a single-plugin .conf (chaining needs a .conflist) with a clear
// error rather than rewriting the cluster's file into another format.
package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshlet/meshlet/node-agent/cni"
)

// Options says where the node's CNI files are and what to install.
type Options struct {
	// ConfDir is the node's CNI configuration directory. Empty means
	// /etc/cni/net.d.
	ConfDir string
	// BinDir is the node's CNI binary directory. Empty means /opt/cni/bin.
	BinDir string
	// Binary is the meshlet-cni binary to copy into BinDir. Empty means
	// do not copy (the binary is put there some other way).
	Binary string
	// SocketPath and StatePath go into the plugin's entry, as the plugin
	// (run by the node's runtime, in the node's mount namespace) sees them;
	// empty leaves them out so the plugin uses its defaults.
	SocketPath string
	StatePath  string
	// Interval is how often Watch re-checks the configuration. Zero means 2s.
	Interval time.Duration
}

func (o *Options) defaults() {
	if o.ConfDir == "" {
		o.ConfDir = "/etc/cni/net.d"
	}
	if o.BinDir == "" {
		o.BinDir = "/opt/cni/bin"
	}
	if o.Interval == 0 {
		o.Interval = 2 * time.Second
	}
}

// ErrNoConfig means the conf dir holds no network configuration yet (the
// cluster's CNI has not written one); Watch waits for it.
var ErrNoConfig = errors.New("no CNI network configuration found")

// entry is meshlet-cni's plugin entry, compact, with fields in a fixed order
// so the installed bytes are stable.
func (o Options) entry() []byte {
	var b bytes.Buffer
	b.WriteString(`{"type":"` + cni.PluginType + `"`)
	if o.SocketPath != "" {
		s, _ := json.Marshal(o.SocketPath)
		b.WriteString(`,"socketPath":` + string(s))
	}
	if o.StatePath != "" {
		s, _ := json.Marshal(o.StatePath)
		b.WriteString(`,"statePath":` + string(s))
	}
	b.WriteString(`}`)
	return b.Bytes()
}

// FirstConfig returns the path of the configuration the runtime uses.
func FirstConfig(confDir string) (string, error) {
	des, err := os.ReadDir(confDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%w in %s", ErrNoConfig, confDir)
		}
		return "", fmt.Errorf("read CNI conf dir: %w", err)
	}
	var names []string
	for _, de := range des {
		switch filepath.Ext(de.Name()) {
		case ".conf", ".conflist", ".json":
			if de.Type().IsRegular() || de.Type()&os.ModeSymlink != 0 {
				names = append(names, de.Name())
			}
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("%w in %s", ErrNoConfig, confDir)
	}
	slices.Sort(names)
	return filepath.Join(confDir, names[0]), nil
}

// Install adds meshlet-cni to the first configuration and copies the binary.
// It reports whether it changed the configuration.
func Install(opts Options) (changed bool, err error) {
	opts.defaults()
	if opts.Binary != "" {
		if err := copyBinary(opts.Binary, filepath.Join(opts.BinDir, cni.PluginType)); err != nil {
			return false, err
		}
	}
	path, err := FirstConfig(opts.ConfDir)
	if err != nil {
		return false, err
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	updated, err := AddPlugin(old, opts.entry())
	if err != nil {
		return false, fmt.Errorf("install meshlet-cni into %s: %w", path, err)
	}
	if bytes.Equal(old, updated) {
		return false, nil
	}
	if err := writeLike(path, updated); err != nil {
		return false, err
	}
	return true, nil
}

// Uninstall removes meshlet-cni from every configuration in the conf dir
// (the first one may have changed since Install) and deletes the binary.
func Uninstall(opts Options) error {
	opts.defaults()
	var errs []error
	des, err := os.ReadDir(opts.ConfDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("read CNI conf dir: %w", err))
	}
	for _, de := range des {
		if filepath.Ext(de.Name()) != ".conflist" && filepath.Ext(de.Name()) != ".json" {
			continue
		}
		path := filepath.Join(opts.ConfDir, de.Name())
		old, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", path, err))
			continue
		}
		updated, err := RemovePlugin(old)
		if err != nil || bytes.Equal(old, updated) {
			continue // not ours to fix, or nothing of ours in it
		}
		if err := writeLike(path, updated); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(filepath.Join(opts.BinDir, cni.PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove plugin binary: %w", err))
	}
	return errors.Join(errs...)
}

// Watch keeps meshlet-cni installed until ctx ends: when the cluster's CNI
// rewrites or replaces its configuration, Install runs again. Errors other
// than ErrNoConfig go to report (nil means drop them).
func Watch(ctx context.Context, opts Options, report func(error)) {
	opts.defaults()
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	for {
		if _, err := Install(opts); err != nil && !errors.Is(err, ErrNoConfig) && report != nil {
			report(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// span is the byte range of one element of the plugins array.
type span struct{ start, end int }

// parsePlugins finds the plugins array in a conflist without re-encoding it:
// the byte ranges of its elements, the offset of its closing bracket and the
// element types.
func parsePlugins(conf []byte) (elems []span, types []string, closing int, err error) {
	dec := json.NewDecoder(bytes.NewReader(conf))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, nil, 0, errors.New("not a JSON object")
	}
	found := false
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, nil, 0, fmt.Errorf("parse: %w", err)
		}
		if k != "plugins" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, nil, 0, fmt.Errorf("parse %v: %w", k, err)
			}
			continue
		}
		found = true
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			return nil, nil, 0, errors.New(`"plugins" is not an array`)
		}
		for dec.More() {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, nil, 0, fmt.Errorf("parse plugins: %w", err)
			}
			end := int(dec.InputOffset())
			elems = append(elems, span{end - len(raw), end})
			var p struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal(raw, &p); err != nil {
				return nil, nil, 0, fmt.Errorf("plugin %d is not an object: %w", len(elems)-1, err)
			}
			types = append(types, p.Type)
		}
		if _, err := dec.Token(); err != nil {
			return nil, nil, 0, fmt.Errorf("parse plugins: %w", err)
		}
		closing = int(dec.InputOffset()) - 1
	}
	if !found {
		return nil, nil, 0, errors.New(`no "plugins" array: a single-plugin .conf cannot be chained into; ask the cluster's CNI for a .conflist`)
	}
	return elems, types, closing, nil
}

// AddPlugin returns conf with entry as the last plugin. An existing
// meshlet-cni entry is replaced in place when it differs, so the result is
// the same however often it runs. All other bytes are kept.
func AddPlugin(conf, entry []byte) ([]byte, error) {
	elems, types, closing, err := parsePlugins(conf)
	if err != nil {
		return nil, err
	}
	if i := slices.Index(types, cni.PluginType); i >= 0 {
		e := elems[i]
		if i == len(elems)-1 {
			return slices.Concat(conf[:e.start], entry, conf[e.end:]), nil
		}
		// Ours is not last: a plugin added after it would run after us and
		// could change what we reported. Move it to the end.
		removed, err := RemovePlugin(conf)
		if err != nil {
			return nil, err
		}
		return AddPlugin(removed, entry)
	}
	if len(elems) == 0 {
		return slices.Concat(conf[:closing], entry, conf[closing:]), nil
	}
	last := elems[len(elems)-1]
	// Repeat the whitespace that comes before the last element, so the
	// new entry sits on its own line when the others do.
	indent := leadingSpace(conf, last.start)
	return slices.Concat(conf[:last.end], []byte(","), indent, entry, conf[last.end:]), nil
}

// RemovePlugin returns conf without meshlet-cni's entries; all other bytes
// are kept.
func RemovePlugin(conf []byte) ([]byte, error) {
	for {
		elems, types, _, err := parsePlugins(conf)
		if err != nil {
			return nil, err
		}
		i := slices.Index(types, cni.PluginType)
		if i < 0 {
			return conf, nil
		}
		var cut span
		switch {
		case i > 0: // from the end of the previous element: drops ",<ws>"
			cut = span{elems[i-1].end, elems[i].end}
		case len(elems) > 1: // first of several: up to the next element
			cut = span{elems[0].start, elems[1].start}
		default:
			cut = elems[0]
		}
		conf = slices.Concat(conf[:cut.start], conf[cut.end:])
	}
}

// leadingSpace returns the whitespace between the previous ',' or '[' and
// offset.
func leadingSpace(b []byte, offset int) []byte {
	i := offset
	for i > 0 && strings.ContainsRune(" \t\r\n", rune(b[i-1])) {
		i--
	}
	return slices.Clone(b[i:offset])
}

// writeLike replaces path atomically, keeping its mode.
func writeLike(path string, data []byte) error {
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := cni.WriteFileAtomic(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// copied remembers, per destination, the source and destination files
// copyBinary last found with the same bytes, so that Watch's polls every
// Interval cost two stats instead of reading both binaries (megabytes each,
// which the agent's heap would otherwise grow by).
var copied sync.Map // dst path → copyStamp

type copyStamp struct{ src, dst os.FileInfo }

// copyBinary puts src at dst atomically unless dst already has its bytes.
func copyBinary(src, dst string) error {
	sfi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("read plugin binary: %w", err)
	}
	dfi, derr := os.Stat(dst)
	if v, ok := copied.Load(dst); ok && derr == nil {
		if s := v.(copyStamp); unchanged(s.src, sfi) && unchanged(s.dst, dfi) {
			return nil
		}
	}
	if derr == nil && dfi.Size() == sfi.Size() {
		if same, err := sameContents(src, dst); err == nil && same {
			copied.Store(dst, copyStamp{sfi, dfi})
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("create CNI bin dir: %w", err)
	}
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("read plugin binary: %w", err)
	}
	defer f.Close()
	if err := cni.WriteAtomic(dst, 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, f)
		return err
	}); err != nil {
		return fmt.Errorf("install plugin binary: %w", err)
	}
	if dfi, err := os.Stat(dst); err == nil {
		copied.Store(dst, copyStamp{sfi, dfi})
	}
	return nil
}

// unchanged reports whether b is the file a was, not written since.
func unchanged(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// sameContents compares two files chunk by chunk.
func sameContents(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 32<<10), make([]byte, 32<<10)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		switch {
		case na != nb || !bytes.Equal(ba[:na], bb[:nb]):
			return false, nil
		case ea == io.EOF || ea == io.ErrUnexpectedEOF:
			return eb == ea, nil // equal so far: equal if both ended here
		case ea != nil || eb != nil:
			return false, errors.Join(ea, eb)
		}
	}
}
