package kubelet

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// reexecEnv marks a kubelet that already moved back to its parent's mount
// namespace.
const reexecEnv = "LAB_KUBELET_MOUNTNS_FIXED"

// sameMountNSAsParent makes the kubelet share its parent's mount namespace.
// `ip netns exec` (a natural way to start it inside the node's netns) also
// gives the process a private mount namespace; the network namespaces the
// kubelet pins under NodeRoot/var/run/netns and the node's bpffs would then
// be invisible to the lab and its tests. In that case the kubelet re-executes
// itself through `nsenter --mount` into the parent's mount namespace, keeping
// its PID and network namespace. It returns only when nothing had to change.
func sameMountNSAsParent() error {
	if os.Getenv(reexecEnv) != "" {
		return nil
	}
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	parentNS := fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid())
	parent, err2 := os.Readlink(parentNS)
	if err1 != nil || err2 != nil || self == parent {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the kubelet's executable: %w", err)
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return fmt.Errorf("the kubelet runs in its own mount namespace (started with ip netns exec?) and nsenter is missing to leave it: start it with only its network namespace changed")
	}
	os.Setenv(reexecEnv, "1")
	argv := append([]string{"nsenter", "--mount=" + parentNS, "--", exe}, os.Args[1:]...)
	if err := syscall.Exec(nsenter, argv, os.Environ()); err != nil {
		return fmt.Errorf("re-exec the kubelet in its parent's mount namespace: %w", err)
	}
	return nil
}
