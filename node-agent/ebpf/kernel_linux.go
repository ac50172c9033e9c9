package ebpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// CheckKernel probes every program type, attach type, map type and helper
// the data path needs and returns an error naming each one this kernel lacks
// (Linux 5.15 or newer has them all; pod ingress uses TCX from 6.6 and
// clsact before).
func CheckKernel() error {
	var missing []string
	var errs []error
	check := func(what string, err error) {
		switch {
		case err == nil:
		case errors.Is(err, ebpf.ErrNotSupported):
			missing = append(missing, what)
		default:
			errs = append(errs, fmt.Errorf("probe %s: %w", what, err))
		}
	}
	for _, pt := range []ebpf.ProgramType{ebpf.CGroupSockAddr, ebpf.CGroupSock, ebpf.SockOps, ebpf.SchedCLS} {
		check("program type "+pt.String(), features.HaveProgramType(pt))
	}
	for _, mt := range []ebpf.MapType{ebpf.Hash, ebpf.Array, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.PerCPUArray} {
		check("map type "+mt.String(), features.HaveMapType(mt))
	}
	for _, h := range []struct {
		pt ebpf.ProgramType
		fn asm.BuiltinFunc
	}{
		{ebpf.CGroupSockAddr, asm.FnGetNetnsCookie},
		{ebpf.CGroupSockAddr, asm.FnGetSocketCookie},
		{ebpf.CGroupSock, asm.FnGetSocketCookie},
		{ebpf.SockOps, asm.FnGetNetnsCookie},
		{ebpf.SockOps, asm.FnGetSocketCookie},
		{ebpf.SockOps, asm.FnSockOpsCbFlagsSet},
		{ebpf.SchedCLS, asm.FnSkcLookupTcp},
		{ebpf.SchedCLS, asm.FnSkAssign},
		{ebpf.SchedCLS, asm.FnSkRelease},
	} {
		check(fmt.Sprintf("helper %s in %s programs", h.fn, h.pt), features.HaveProgramHelper(h.pt, h.fn))
	}
	for _, a := range []struct {
		pt ebpf.ProgramType
		at ebpf.AttachType
	}{
		{ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect},
		{ebpf.CGroupSockAddr, ebpf.AttachCGroupInet6Connect},
		{ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Sendmsg},
		{ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Sendmsg},
		{ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Recvmsg},
		{ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Recvmsg},
		{ebpf.CGroupSockAddr, ebpf.AttachCgroupInet4GetPeername},
		{ebpf.CGroupSockAddr, ebpf.AttachCgroupInet6GetPeername},
		{ebpf.CGroupSock, ebpf.AttachCgroupInetSockRelease},
	} {
		check(fmt.Sprintf("attach type %s", a.at), haveAttachType(a.pt, a.at))
	}
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("kernel lacks %s: meshlet needs Linux 5.15 or newer with BPF enabled", strings.Join(missing, ", ")))
	}
	return errors.Join(errs...)
}

// haveAttachType loads a trivial program of type pt expecting attach type at:
// the kernel refuses attach types it does not know with EINVAL.
func haveAttachType(pt ebpf.ProgramType, at ebpf.AttachType) error {
	p, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:         pt,
		AttachType:   at,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "GPL",
	}, ebpf.ProgramOptions{LogDisabled: true})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.E2BIG) {
		return ebpf.ErrNotSupported
	}
	if err != nil {
		return err
	}
	return p.Close()
}
