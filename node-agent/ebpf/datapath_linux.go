package ebpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

const (
	afInet  = 2
	afInet6 = 10
	// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14), not in x/sys/unix yet.
	soNetnsCookie = 71
	linkPinPrefix = "link_"
)

// Datapath is the loaded data path: programs attached, maps pinned. Its
// methods are safe for concurrent use.
type Datapath struct {
	opts  Options
	maps  sockopsMaps
	progs []*ebpf.Program
	tc    *ebpf.Program
	mu    sync.Mutex // guards links
	links []link.Link
}

// cgroupProg is one program the data path attaches to Options.CgroupPath.
type cgroupProg struct {
	name   string
	prog   *ebpf.Program
	attach ebpf.AttachType
}

// Load loads the programs, creates or reuses the pinned maps under PinDir and
// attaches the cgroup programs. Links already pinned there (a previous agent's)
// are updated in place to the new programs, so capture never stops.
func Load(opts Options) (*Datapath, error) { return load(opts, false) }

// Adopt is Load for a restarted agent: it fails with ErrNothingPinned when
// PinDir holds no data path, instead of starting a fresh one.
func Adopt(opts Options) (*Datapath, error) { return load(opts, true) }

func load(opts Options, adopt bool) (_ *Datapath, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := ensureBPFFS(opts.PinDir); err != nil {
		return nil, err
	}
	if adopt {
		if _, err := os.Stat(filepath.Join(opts.PinDir, sockopsMapMlEnrolled)); err != nil {
			return nil, fmt.Errorf("adopt %s: %w", opts.PinDir, ErrNothingPinned)
		}
	}
	if st, err := os.Stat(opts.CgroupPath); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("open cgroup %s: not a directory (%v): set CgroupPath to a cgroup v2 directory", opts.CgroupPath, err)
	}

	d := &Datapath{opts: opts}
	defer func() {
		if err != nil {
			_ = d.Close()
		}
	}()
	if err := dropIncompatiblePins(opts.PinDir); err != nil {
		return nil, err
	}
	copts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}}

	// Every object declares every map, pinned by name: the first load
	// creates (or reuses) the pins and the others share them.
	var so sockopsObjects
	if err := loadSockopsObjects(&so, copts); err != nil {
		return nil, fmt.Errorf("load sockops object: %w", err)
	}
	d.maps = so.sockopsMaps
	d.progs = append(d.progs, so.MlSockops)
	var (
		co connectObjects
		sm sendmsgObjects
		rm recvmsgObjects
		gp getpeernameObjects
		sr sockReleaseObjects
		tc tcIngressObjects
	)
	for _, o := range []struct {
		name  string
		load  func() error
		maps  interface{ Close() error }
		progs func() []*ebpf.Program
	}{
		{"connect", func() error { return loadConnectObjects(&co, copts) }, &co.connectMaps,
			func() []*ebpf.Program { return []*ebpf.Program{co.MlConnect4, co.MlConnect6} }},
		{"sendmsg", func() error { return loadSendmsgObjects(&sm, copts) }, &sm.sendmsgMaps,
			func() []*ebpf.Program { return []*ebpf.Program{sm.MlSendmsg4, sm.MlSendmsg6} }},
		{"recvmsg", func() error { return loadRecvmsgObjects(&rm, copts) }, &rm.recvmsgMaps,
			func() []*ebpf.Program { return []*ebpf.Program{rm.MlRecvmsg4, rm.MlRecvmsg6} }},
		{"getpeername", func() error { return loadGetpeernameObjects(&gp, copts) }, &gp.getpeernameMaps,
			func() []*ebpf.Program { return []*ebpf.Program{gp.MlGetpeername4, gp.MlGetpeername6} }},
		{"sock_release", func() error { return loadSockReleaseObjects(&sr, copts) }, &sr.sockReleaseMaps,
			func() []*ebpf.Program { return []*ebpf.Program{sr.MlSockRelease} }},
		{"tc_ingress", func() error { return loadTcIngressObjects(&tc, copts) }, &tc.tcIngressMaps,
			func() []*ebpf.Program { return []*ebpf.Program{tc.MlTcIngress} }},
	} {
		if err := o.load(); err != nil {
			return nil, fmt.Errorf("load %s object: %w", o.name, err)
		}
		_ = o.maps.Close() // the same pinned maps as d.maps
		d.progs = append(d.progs, o.progs()...)
	}
	d.tc = tc.MlTcIngress

	if err := d.writeConfig(); err != nil {
		return nil, err
	}
	cgid, err := cgroupID(opts.CgroupPath)
	if err != nil {
		return nil, err
	}
	// A failed Load leaves no link it created behind (adopted ones stay).
	var created []link.Link
	defer func() {
		if err != nil {
			for _, l := range created {
				_ = l.Unpin()
			}
		}
	}()
	for _, p := range []cgroupProg{
		{"connect4", co.MlConnect4, ebpf.AttachCGroupInet4Connect},
		{"connect6", co.MlConnect6, ebpf.AttachCGroupInet6Connect},
		{"sendmsg4", sm.MlSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{"sendmsg6", sm.MlSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		{"recvmsg4", rm.MlRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
		{"recvmsg6", rm.MlRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
		{"getpeername4", gp.MlGetpeername4, ebpf.AttachCgroupInet4GetPeername},
		{"getpeername6", gp.MlGetpeername6, ebpf.AttachCgroupInet6GetPeername},
		{"sock_release", sr.MlSockRelease, ebpf.AttachCgroupInetSockRelease},
		{"sockops", so.MlSockops, ebpf.AttachCGroupSockOps},
	} {
		l, isNew, err := d.attachCgroup(p, cgid)
		if err != nil {
			return nil, err
		}
		if isNew {
			created = append(created, l)
		}
	}
	return d, nil
}

// dropIncompatiblePins unpins every pinned map whose layout differs from this
// build's (a map changed between agent versions), so that Load creates it
// anew instead of failing. Programs still attached keep the old map until
// their links are updated to the new programs. Compatible maps, such as
// ml_enrolled in every release so far, are kept and adopted with their data.
func dropIncompatiblePins(dir string) error {
	spec, err := loadSockops()
	if err != nil {
		return fmt.Errorf("read map layout: %w", err)
	}
	for name, ms := range spec.Maps {
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load pinned map %s: %w", path, err)
		}
		cerr := ms.Compatible(m)
		_ = m.Close()
		if cerr == nil {
			continue
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("unpin incompatible map %s (%v): %w", path, cerr, err)
		}
	}
	return nil
}

// ensureBPFFS creates dir and checks that it is on a bpffs mount.
func ensureBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin dir %s: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs pin dir %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin dir %s is not on a bpffs: mount one (mount -t bpf bpf /sys/fs/bpf) or set PinDir", dir)
	}
	return nil
}

// cgroupID is the id the kernel reports for a cgroup v2 directory: its inode.
func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// attachCgroup attaches p, or points the link a previous agent pinned at p.
// isNew says that the link was created (and pinned) here.
func (d *Datapath) attachCgroup(p cgroupProg, cgid uint64) (_ link.Link, isNew bool, _ error) {
	pin := filepath.Join(d.opts.PinDir, linkPinPrefix+p.name)
	l, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		if info, ierr := l.Info(); ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId != cgid {
			_ = l.Close()
			return nil, false, fmt.Errorf("adopt link %s: attached to cgroup id %d, not %s (id %d): Uninstall the old data path first",
				pin, info.Cgroup().CgroupId, d.opts.CgroupPath, cgid)
		}
		if err := l.Update(p.prog); err != nil {
			_ = l.Close()
			return nil, false, fmt.Errorf("update pinned link %s: %w", pin, err)
		}
	case errors.Is(err, os.ErrNotExist):
		l, err = link.AttachCgroup(link.CgroupOptions{Path: d.opts.CgroupPath, Attach: p.attach, Program: p.prog})
		if err != nil {
			return nil, false, fmt.Errorf("attach %s to cgroup %s: %w", p.name, d.opts.CgroupPath, err)
		}
		if err := l.Pin(pin); err != nil {
			_ = l.Close()
			return nil, false, fmt.Errorf("pin link %s: %w", pin, err)
		}
		isNew = true
	default:
		return nil, false, fmt.Errorf("load pinned link %s: %w", pin, err)
	}
	d.mu.Lock()
	d.links = append(d.links, l)
	d.mu.Unlock()
	return l, isNew, nil
}

func (d *Datapath) writeConfig() error {
	cfg := sockopsMlConfig{
		AgentMark:    d.opts.AgentMark,
		OutboundPort: uint32(d.opts.OutboundPort),
		DnsPort:      uint32(d.opts.DNSPort),
		InboundPort:  uint32(d.opts.InboundPort),
		TcSkipMark:   d.opts.IngressSkipMark,
	}
	if err := d.maps.MlCfg.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	want := map[sockopsMlExcludeKey]bool{}
	for _, e := range d.opts.ExcludeOutbound {
		k := sockopsMlExcludeKey{Port: e.Port}
		if e.Addr.IsValid() {
			k.Ip = e.Addr.As16()
		}
		want[k] = true
	}
	if err := replaceSet(d.maps.MlExclude, want); err != nil {
		return fmt.Errorf("write outbound exclusions: %w", err)
	}
	wantIn := map[uint16]bool{}
	for _, p := range d.opts.ExcludeInboundPorts {
		wantIn[p] = true
	}
	if err := replaceSet(d.maps.MlInExclude, wantIn); err != nil {
		return fmt.Errorf("write inbound port exclusions: %w", err)
	}
	wantSrc := map[sockopsMlIp]bool{}
	for _, a := range d.opts.IngressSkipSources {
		wantSrc[sockopsMlIp{Ip: a.As16()}] = true
	}
	if err := replaceSet(d.maps.MlInSkipSrc, wantSrc); err != nil {
		return fmt.Errorf("write inbound skipped sources: %w", err)
	}
	return nil
}

// replaceSet makes the keys of a set-like map (value: one byte) exactly want.
func replaceSet[K comparable](m *ebpf.Map, want map[K]bool) error {
	return replaceSetWhere(m, want, nil)
}

// replaceSetWhere is replaceSet for the keys in (all when in is nil): keys
// outside it are left as they are.
func replaceSetWhere[K comparable](m *ebpf.Map, want map[K]bool, in func(K) bool) error {
	var (
		k     K
		v     uint8
		stale []K
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if (in == nil || in(k)) && !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	for k := range want {
		if err := m.Put(k, uint8(1)); err != nil {
			return err
		}
	}
	return nil
}

func podRecord(p Pod) (sockopsMlPod, error) {
	r := sockopsMlPod{WorkloadId: p.WorkloadID, Flags: p.Flags}
	if p.IPv4.IsValid() {
		if !p.IPv4.Unmap().Is4() {
			return r, fmt.Errorf("pod IPv4 %s is not an IPv4 address", p.IPv4)
		}
		r.Ip4 = p.IPv4.Unmap().As4()
	}
	if p.IPv6.IsValid() {
		if !p.IPv6.Is6() || p.IPv6.Is4In6() {
			return r, fmt.Errorf("pod IPv6 %s is not an IPv6 address", p.IPv6)
		}
		r.Ip6 = p.IPv6.As16()
	}
	return r, nil
}

func podFromRecord(r sockopsMlPod) Pod {
	p := Pod{WorkloadID: r.WorkloadId, Flags: r.Flags}
	if r.Ip4 != [4]uint8{} {
		p.IPv4 = netip.AddrFrom4(r.Ip4)
	}
	if r.Ip6 != [16]uint8{} {
		p.IPv6 = netip.AddrFrom16(r.Ip6)
	}
	return p
}

// Enroll starts capture for the pod whose netns has the given cookie (see
// NetnsCookie), or updates its record.
func (d *Datapath) Enroll(netnsCookie uint64, p Pod) error {
	if netnsCookie == 0 {
		return errors.New("enroll pod: netns cookie is 0: read it with NetnsCookie")
	}
	r, err := podRecord(p)
	if err != nil {
		return fmt.Errorf("enroll pod: %w", err)
	}
	if own, err := ownNetnsCookie(); err != nil {
		return fmt.Errorf("enroll pod: %w", err)
	} else if own == netnsCookie {
		return errors.New("enroll pod: refusing the agent's own network namespace (a hostNetwork pod is never enrolled)")
	}
	if err := d.maps.MlEnrolled.Put(netnsCookie, r); err != nil {
		return fmt.Errorf("enroll pod (netns cookie %d): %w", netnsCookie, err)
	}
	want := map[sockopsMlProbeKey]bool{}
	addProbes(want, p)
	if err := d.replaceProbes(podIPs(r), want); err != nil {
		return fmt.Errorf("enroll pod (netns cookie %d): probe ports: %w", netnsCookie, err)
	}
	return nil
}

// SetProbeSources sets the addresses kubelet's probes come from (the
// node's): only SYNs from them to a pod's ProbePorts pass tc ingress.
func (d *Datapath) SetProbeSources(addrs []netip.Addr) error {
	want := map[sockopsMlIp]bool{}
	for _, a := range addrs {
		if a.IsValid() {
			want[sockopsMlIp{Ip: a.Unmap().As16()}] = true
		}
	}
	if len(want) > int(d.maps.MlProbeSrc.MaxEntries()) {
		return fmt.Errorf("set probe sources: %d addresses, at most %d", len(want), d.maps.MlProbeSrc.MaxEntries())
	}
	if err := replaceSet(d.maps.MlProbeSrc, want); err != nil {
		return fmt.Errorf("set probe sources: %w", err)
	}
	return nil
}

// addProbes adds p's probe ports on each of its addresses to want.
func addProbes(want map[sockopsMlProbeKey]bool, p Pod) {
	for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
		if !ip.IsValid() {
			continue
		}
		for _, port := range p.ProbePorts {
			want[sockopsMlProbeKey{Ip: ip.Unmap().As16(), Port: port}] = true
		}
	}
}

// podIPs are the addresses of a pod record, as probe keys hold them.
func podIPs(r sockopsMlPod) map[[16]byte]bool {
	out := map[[16]byte]bool{}
	if r.Ip4 != [4]uint8{} {
		out[netip.AddrFrom4(r.Ip4).As16()] = true
	}
	if r.Ip6 != [16]uint8{} {
		out[r.Ip6] = true
	}
	return out
}

// replaceProbes makes the probe entries for the addresses in ips exactly
// those of want (nil ips: every address).
func (d *Datapath) replaceProbes(ips map[[16]byte]bool, want map[sockopsMlProbeKey]bool) error {
	var in func(sockopsMlProbeKey) bool
	if ips != nil {
		in = func(k sockopsMlProbeKey) bool { return ips[k.Ip] }
	}
	return replaceSetWhere(d.maps.MlInProbe, want, in)
}

// ownNetnsCookie is the cookie of the netns this process runs in.
func ownNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
	if err != nil {
		return 0, fmt.Errorf("read own SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

// Unenroll stops capture for a pod's netns; unknown cookies are not an error.
// Connections already captured keep going to the outbound listener.
func (d *Datapath) Unenroll(netnsCookie uint64) error {
	var r sockopsMlPod
	found := d.maps.MlEnrolled.Lookup(netnsCookie, &r) == nil
	if err := d.maps.MlEnrolled.Delete(netnsCookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unenroll pod (netns cookie %d): %w", netnsCookie, err)
	}
	if found {
		// Its probe ports go with it: the address may be another pod's next.
		if err := d.replaceProbes(podIPs(r), nil); err != nil {
			return fmt.Errorf("unenroll pod (netns cookie %d): probe ports: %w", netnsCookie, err)
		}
	}
	return nil
}

// Enrolled returns the enrolled pods by netns cookie.
func (d *Datapath) Enrolled() (map[uint64]Pod, error) {
	out := map[uint64]Pod{}
	var (
		k uint64
		v sockopsMlPod
	)
	it := d.maps.MlEnrolled.Iterate()
	for it.Next(&k, &v) {
		out[k] = podFromRecord(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list enrolled pods: %w", err)
	}
	return out, nil
}

// Reconcile makes the enrolled set exactly desired: it writes every desired
// pod, removes every other entry (a pod that went away, or whose IP a desired
// pod now has) and drops original-destination entries of netns no longer
// enrolled. Two desired pods with one IP are refused before any change.
func (d *Datapath) Reconcile(desired map[uint64]Pod) (ReconcileResult, error) {
	var res ReconcileResult
	owner := map[netip.Addr]uint64{}
	want := map[uint64]sockopsMlPod{}
	own, err := ownNetnsCookie()
	if err != nil {
		return res, fmt.Errorf("reconcile: %w", err)
	}
	for c, p := range desired {
		r, err := podRecord(p)
		if err != nil {
			return res, fmt.Errorf("reconcile: pod with netns cookie %d: %w", c, err)
		}
		if c == own || c == 0 {
			return res, fmt.Errorf("reconcile: netns cookie %d is the agent's own network namespace or zero: never enrolled", c)
		}
		for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
			if !ip.IsValid() {
				continue
			}
			if o, dup := owner[ip]; dup {
				return res, fmt.Errorf("reconcile: pods with netns cookies %d and %d both claim IP %s: fix the desired set", o, c, ip)
			}
			owner[ip] = c
		}
		want[c] = r
	}
	current := map[uint64]sockopsMlPod{}
	var (
		k uint64
		v sockopsMlPod
	)
	it := d.maps.MlEnrolled.Iterate()
	for it.Next(&k, &v) {
		current[k] = v
	}
	if err := it.Err(); err != nil {
		return res, fmt.Errorf("reconcile: list enrolled pods: %w", err)
	}
	wantProbes := map[sockopsMlProbeKey]bool{}
	for _, p := range desired {
		addProbes(wantProbes, p)
	}
	// Remove first, so that no moment has two entries for one IP.
	for c := range current {
		if _, ok := want[c]; ok {
			continue
		}
		if err := d.Unenroll(c); err != nil {
			return res, fmt.Errorf("reconcile: %w", err)
		}
		res.Removed = append(res.Removed, c)
	}
	for c, r := range want {
		if cur, ok := current[c]; ok && cur == r {
			continue
		}
		if err := d.maps.MlEnrolled.Put(c, r); err != nil {
			return res, fmt.Errorf("reconcile: enroll pod (netns cookie %d): %w", c, err)
		}
		res.Upserted = append(res.Upserted, c)
	}
	if err := d.replaceProbes(nil, wantProbes); err != nil {
		return res, fmt.Errorf("reconcile: probe ports: %w", err)
	}
	var (
		ck    sockopsMlConnKey
		cv    sockopsMlAddr
		stale []sockopsMlConnKey
	)
	oit := d.maps.MlOrigdst.Iterate()
	for oit.Next(&ck, &cv) {
		if _, ok := want[ck.NetnsCookie]; !ok {
			stale = append(stale, ck)
		}
	}
	if err := oit.Err(); err != nil {
		return res, fmt.Errorf("reconcile: list original destinations: %w", err)
	}
	for _, k := range stale {
		if err := d.maps.MlOrigdst.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return res, fmt.Errorf("reconcile: drop original destination: %w", err)
		}
		res.RemovedConns++
	}
	n, err := d.sweepIngressPins()
	res.RemovedIngress = n
	if err != nil {
		return res, fmt.Errorf("reconcile: %w", err)
	}
	return res, nil
}

// sweepIngressPins unpins pod ingress links whose interface is gone (the pod
// and its netns went away while no agent was watching).
func (d *Datapath) sweepIngressPins() (int, error) {
	entries, err := os.ReadDir(d.opts.PinDir)
	if err != nil {
		return 0, fmt.Errorf("read pin dir: %w", err)
	}
	n := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ingressPinPrefix) {
			continue
		}
		path := filepath.Join(d.opts.PinDir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return n, fmt.Errorf("load pinned ingress link %s: %w", path, err)
		}
		info, err := l.Info()
		if err == nil && info.TCX() != nil && info.TCX().Ifindex == 0 {
			if err := l.Unpin(); err != nil {
				_ = l.Close()
				return n, fmt.Errorf("unpin ingress link %s: %w", path, err)
			}
			n++
		}
		_ = l.Close()
	}
	return n, nil
}

// OriginalDst returns the address the app dialled for a connection the agent
// accepted on its outbound listener inside the pod's netns.
func (d *Datapath) OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T has no file descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var (
		cookie uint64
		serr   error
	)
	if err := raw.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, soNetnsCookie)
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: read SO_NETNS_COOKIE: %w", serr)
	}
	client, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: remote address %s: %w", c.RemoteAddr(), err)
	}
	return d.OriginalDstOf(cookie, client)
}

// OriginalDstOf returns the address the app dialled for the captured
// connection from client (the accepted socket's remote address) in the netns
// with the given cookie.
func (d *Datapath) OriginalDstOf(netnsCookie uint64, client netip.AddrPort) (netip.AddrPort, error) {
	k := sockopsMlConnKey{NetnsCookie: netnsCookie, Ip: client.Addr().As16(), Port: client.Port()}
	var v sockopsMlAddr
	if err := d.maps.MlOrigdst.Lookup(k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return netip.AddrPort{}, fmt.Errorf("original destination of %s (netns cookie %d): %w", client, netnsCookie, ErrNoOriginalDst)
		}
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", client, err)
	}
	return addrOf(v), nil
}

// SockOriginalDst returns the address a captured socket, known by its socket
// cookie (SO_COOKIE, or sock_diag's), was sending to when capture rewrote
// it: for a UDP socket the resolver of its last captured DNS query, kept
// until the socket is released. It is ErrNoOriginalDst for a socket that was
// not captured, is gone, or is a TCP connection past its handshake (whose
// record moved to OriginalDstOf).
func (d *Datapath) SockOriginalDst(socketCookie uint64) (netip.AddrPort, error) {
	var v sockopsMlAddr
	if err := d.maps.MlSockDst.Lookup(socketCookie, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return netip.AddrPort{}, fmt.Errorf("original destination of socket %d: %w", socketCookie, ErrNoOriginalDst)
		}
		return netip.AddrPort{}, fmt.Errorf("original destination of socket %d: %w", socketCookie, err)
	}
	return addrOf(v), nil
}

func addrOf(v sockopsMlAddr) netip.AddrPort {
	a := netip.AddrFrom16(v.Ip)
	if v.Family == afInet {
		a = a.Unmap()
	}
	return netip.AddrPortFrom(a, v.Port)
}

// Stats returns the counters of every workload seen, summed over CPUs.
func (d *Datapath) Stats() (map[uint32]Stats, error) {
	out := map[uint32]Stats{}
	var (
		k  uint32
		vs []sockopsMlStats
	)
	it := d.maps.MlWorkloadStats.Iterate()
	for it.Next(&k, &vs) {
		var s Stats
		for _, v := range vs {
			s.ConnsOpened += v.ConnsOpened
			s.ConnsClosed += v.ConnsClosed
			s.BytesSent += v.BytesSent
			s.BytesReceived += v.BytesReceived
			s.PacketsSent += v.PacketsSent
			s.PacketsReceived += v.PacketsReceived
			s.Retransmits += v.Retransmits
			for i := range s.RTT {
				s.RTT[i] += v.RttUsBucket[i]
			}
			s.CapturedTCP += v.CapturedTcp
			s.CapturedDNS += v.CapturedDns
			s.BypassedMark += v.BypassedMark
			s.BypassedMeshPort += v.BypassedMeshPort
			s.BypassedExcluded += v.BypassedExcluded
			s.BypassedFlags += v.BypassedFlags
		}
		out[k] = s
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read workload stats: %w", err)
	}
	return out, nil
}

// PruneStats drops the counters of every workload not in keep (workloads
// with no pod left on the node), so that the stats map does not fill up.
func (d *Datapath) PruneStats(keep map[uint32]bool) (int, error) {
	var (
		k     uint32
		vs    []sockopsMlStats
		stale []uint32
	)
	it := d.maps.MlWorkloadStats.Iterate()
	for it.Next(&k, &vs) {
		if !keep[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("prune workload stats: %w", err)
	}
	for _, k := range stale {
		if err := d.maps.MlWorkloadStats.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, fmt.Errorf("prune workload stats of %d: %w", k, err)
		}
	}
	return len(stale), nil
}

// IngressStats returns the tc ingress counters, summed over CPUs.
func (d *Datapath) IngressStats() (IngressStats, error) {
	var vs []sockopsMlTcStats
	if err := d.maps.MlTcCounts.Lookup(uint32(0), &vs); err != nil {
		return IngressStats{}, fmt.Errorf("read ingress stats: %w", err)
	}
	var s IngressStats
	for _, v := range vs {
		s.Steered += v.Steered
		s.PassedExcludedPort += v.PassedExcludedPort
		s.PassedMark += v.PassedMark
		s.PassedSource += v.PassedSource
		s.PassedNoListener += v.PassedNoListener
		s.AssignFailed += v.AssignFailed
		s.PassedProbe += v.PassedProbe
	}
	return s, nil
}

// Close releases this process's handles. Pinned maps and links stay, so
// capture goes on until a new agent adopts them or Uninstall runs.
func (d *Datapath) Close() error {
	var errs []error
	d.mu.Lock()
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	d.links = nil
	d.mu.Unlock()
	// Programs and maps keep their (closed) handles: a method racing with
	// Close gets an error, not a nil dereference.
	for _, p := range d.progs {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	errs = append(errs, d.maps.Close())
	return errors.Join(errs...)
}

// Uninstall detaches every program (cgroup and pod ingress links pinned under
// PinDir), removes the pinned maps and closes d. Capture stops. Pod ingress
// attached as clsact filters (kernels without TCX) cannot be found from the
// pin dir: DetachPodIngress them first.
func (d *Datapath) Uninstall() error {
	var errs []error
	entries, err := os.ReadDir(d.opts.PinDir)
	if err != nil {
		errs = append(errs, fmt.Errorf("read pin dir: %w", err))
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, linkPinPrefix) && !strings.HasPrefix(name, ingressPinPrefix) {
			continue
		}
		path := filepath.Join(d.opts.PinDir, name)
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", path, err))
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin link %s: %w", path, err))
		}
		errs = append(errs, l.Close())
	}
	d.mu.Lock()
	for _, l := range d.links {
		_ = l.Unpin() // already gone from the pin dir; a no-op when so
	}
	d.mu.Unlock()
	for _, m := range []*ebpf.Map{d.maps.MlCfg, d.maps.MlEnrolled, d.maps.MlExclude, d.maps.MlInExclude, d.maps.MlInSkipSrc,
		d.maps.MlInProbe, d.maps.MlProbeSrc, d.maps.MlOrigdst, d.maps.MlSockDst, d.maps.MlTcCounts, d.maps.MlWorkloadStats} {
		if m != nil {
			if err := m.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin map: %w", err))
			}
		}
	}
	errs = append(errs, d.Close())
	if err := os.Remove(d.opts.PinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pin dir: %w", err))
	}
	return errors.Join(errs...)
}
