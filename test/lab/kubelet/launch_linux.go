package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// init turns the process into a container's init when re-executed with
// initArg; it never returns then. Any binary linking this package (the lab
// binary, this package's test binary) can be a container's init this way.
func init() {
	if len(os.Args) < 2 || os.Args[1] != initArg {
		return
	}
	if err := runInit(); err != nil {
		fmt.Fprintf(os.Stderr, "lab init: %v\n", err)
		os.Exit(127)
	}
}

// runInit does what initSpec says, then execs. It runs on the main thread
// (package init runs there, locked); every per-thread change below (netns,
// credentials, capabilities) is made on that thread, the one that execs.
func runInit() error {
	runtime.LockOSThread()
	var s initSpec
	if err := json.Unmarshal([]byte(os.Getenv(initSpecEnv)), &s); err != nil {
		return fmt.Errorf("read %s: %w", initSpecEnv, err)
	}
	if s.NetNS != "" {
		fd, err := unix.Open(s.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", s.NetNS, err)
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("join netns %s: %w", s.NetNS, err)
		}
		unix.Close(fd)
	}
	// The parent cloned us into a new mount namespace; keep our mounts from
	// propagating back to the node's.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make / a slave mount: %w", err)
	}
	for _, m := range s.Mounts {
		if err := bindMount(m); err != nil {
			return err
		}
	}
	// Open the program while still root: the container's user may not be
	// able to traverse the directories the lab keeps image binaries in (a
	// clone under a 0700 temp dir, or /root), just as a runtime's image store
	// belongs to root; the exec below then goes through this descriptor.
	prog, err := unix.Open(s.Path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("exec %s: %w", s.Path, err)
	}
	if err := dropPrivileges(&s); err != nil {
		return err
	}
	dir := s.Dir
	if dir == "" {
		dir = "/"
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("chdir %s: %w", dir, err)
	}
	err = execFD(prog, s.Args, s.Env)
	if errors.Is(err, unix.ENOENT) {
		// A script: its interpreter cannot read the closed descriptor.
		err = unix.Exec(s.Path, s.Args, s.Env)
	}
	return fmt.Errorf("exec %s: %w", s.Path, err)
}

// execFD executes the program open at fd (execveat with AT_EMPTY_PATH); it
// returns only on failure.
func execFD(fd int, argv, env []string) error {
	empty, err := unix.BytePtrFromString("")
	if err != nil {
		return err
	}
	argvp, err := syscall.SlicePtrFromStrings(argv)
	if err != nil {
		return err
	}
	envp, err := syscall.SlicePtrFromStrings(env)
	if err != nil {
		return err
	}
	_, _, e := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argvp[0])), uintptr(unsafe.Pointer(&envp[0])), unix.AT_EMPTY_PATH, 0)
	return e
}

// bindMount mounts m.Source at m.Target, creating the target as a file or a
// directory like its source.
func bindMount(m mountSpec) error {
	st, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("volume source %s: %w", m.Source, err)
	}
	if _, err := os.Lstat(m.Target); os.IsNotExist(err) {
		if st.IsDir() {
			err = os.MkdirAll(m.Target, 0o755)
		} else if err = os.MkdirAll(filepath.Dir(m.Target), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(m.Target, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("create mount point %s: %w", m.Target, err)
		}
	}
	if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount %s at %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		if err := unix.Mount("", m.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", m.Target, err)
		}
	}
	return nil
}

func rawErr(_, _ uintptr, e syscall.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

// dropPrivileges applies user, groups and capabilities on this thread only,
// with raw system calls (the Go wrappers change every thread).
func dropPrivileges(s *initSpec) error {
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("set no_new_privs: %w", err)
		}
	}
	var keep uint64
	if !s.Privileged {
		for _, c := range s.Caps {
			n, ok := capNumbers[c]
			if !ok {
				return fmt.Errorf("unknown capability %q", c)
			}
			keep |= 1 << n
		}
		last := lastCap()
		for c := 0; c <= last; c++ {
			if keep&(1<<c) == 0 {
				if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
					return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
				}
			}
		}
	}
	uid := int64(0)
	if s.UID != nil {
		uid = *s.UID
	}
	if s.GID != nil || len(s.Groups) > 0 || uid != 0 {
		groups := make([]uint32, len(s.Groups))
		for i, g := range s.Groups {
			groups[i] = uint32(g)
		}
		var p unsafe.Pointer
		if len(groups) > 0 {
			p = unsafe.Pointer(&groups[0])
		}
		if err := rawErr(unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(p), 0)); err != nil {
			return fmt.Errorf("setgroups %v: %w", groups, err)
		}
		gid := int64(0)
		if s.GID != nil {
			gid = *s.GID
		}
		if err := rawErr(unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid))); err != nil {
			return fmt.Errorf("setgid %d: %w", gid, err)
		}
	}
	if uid == 0 {
		return nil // root's capabilities after exec are its bounding set
	}
	if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("keep capabilities: %w", err)
	}
	if err := rawErr(unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid))); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	if keep == 0 {
		return nil
	}
	// A non-root user keeps capabilities across exec only as ambient ones.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: uint32(keep), Permitted: uint32(keep), Inheritable: uint32(keep)},
		{Effective: uint32(keep >> 32), Permitted: uint32(keep >> 32), Inheritable: uint32(keep >> 32)},
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set capabilities: %w", err)
	}
	for c := 0; c < 64; c++ {
		if keep&(1<<c) != 0 {
			if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c), 0, 0); err != nil {
				return fmt.Errorf("raise ambient capability %d: %w", c, err)
			}
		}
	}
	return nil
}

// lastCap is the kernel's highest capability number.
func lastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 40
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 40
	}
	return n
}

// launchOptions configure launch.
type launchOptions struct {
	Spec   initSpec // what the init does
	Cgroup string   // cgroup v2 directory the process starts in; required
	Log    *os.File // stdout and stderr; /dev/null when nil
}

// launch starts the lab binary as the container's init (which execs the
// container's program, keeping its PID) in a new mount namespace, directly
// inside opts.Cgroup.
func launch(opts launchOptions) (*exec.Cmd, error) {
	spec, err := json.Marshal(opts.Spec)
	if err != nil {
		return nil, fmt.Errorf("encode init spec: %w", err)
	}
	cg, err := unix.Open(opts.Cgroup, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", opts.Cgroup, err)
	}
	defer unix.Close(cg)
	cmd := &exec.Cmd{
		Path: "/proc/self/exe",
		Args: []string{filepath.Base(opts.Spec.Path), initArg},
		Env:  []string{initSpecEnv + "=" + string(spec)},
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags:  unix.CLONE_NEWNS,
			UseCgroupFD: true,
			CgroupFD:    cg,
			Setsid:      true,
		},
	}
	if opts.Log != nil {
		cmd.Stdout, cmd.Stderr = opts.Log, opts.Log
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", opts.Spec.Path, err)
	}
	waitExec(cmd.Process.Pid)
	return cmd, nil
}

// waitExec waits (up to 2s) until the init has exec'd the container's program,
// so that whoever joins the process's namespaces next gets the container's.
func waitExec(pid int) {
	self, _ := os.Readlink("/proc/self/exe")
	for i := 0; i < 200; i++ {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || exe != self {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
