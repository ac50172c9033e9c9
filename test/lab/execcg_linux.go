package lab

import (
	"fmt"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// inCgroup starts cmd directly in the cgroup v2 dir, as `kubectl exec` puts
// its process in the container's cgroup: the mesh's eBPF connect hooks are
// attached by cgroup, so a process outside it would bypass the mesh. The
// returned func closes the dir once cmd has started.
func inCgroup(cmd *exec.Cmd, dir string) (func(), error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open container cgroup %s: %w", dir, err)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = fd
	return func() { unix.Close(fd) }, nil
}
