package kubelet

// initArg is argv[1] of the lab binary re-executed as a container's tiny
// init: it joins the pod's network namespace, bind-mounts the volumes in its
// own mount namespace, drops to the container's user and capabilities and
// execs the container's program (see launch_linux.go).
const initArg = "__lab_init"

// initSpecEnv carries the JSON initSpec to the init.
const initSpecEnv = "LAB_INIT_SPEC"

// mountSpec is one bind mount in a container's mount namespace.
type mountSpec struct {
	Source   string `json:"source"`   // existing file or directory
	Target   string `json:"target"`   // mountPath; created (as the source's kind) when missing
	ReadOnly bool   `json:"readOnly"` // remount read-only
}

// initSpec is what the init does before exec.
type initSpec struct {
	NetNS      string      `json:"netns,omitempty"`      // network namespace path to join; empty: the caller's
	Mounts     []mountSpec `json:"mounts,omitempty"`     // bind mounts, in order
	Path       string      `json:"path"`                 // program to exec
	Args       []string    `json:"args"`                 // its argv
	Env        []string    `json:"env"`                  // its environment
	Dir        string      `json:"dir,omitempty"`        // working directory; "/" when empty
	UID        *int64      `json:"uid,omitempty"`        // runAsUser; root when nil
	GID        *int64      `json:"gid,omitempty"`        // runAsGroup; the uid's group 0 when nil
	Groups     []int64     `json:"groups,omitempty"`     // supplementary groups
	Privileged bool        `json:"privileged,omitempty"` // keep every capability
	Caps       []string    `json:"caps,omitempty"`       // capability names kept when not privileged
	NoNewPrivs bool        `json:"noNewPrivs,omitempty"` // allowPrivilegeEscalation: false
}
