// Package kubelet is the lab's own kubelet: it registers one lab node with the
// API server and runs the pods the real scheduler binds to it as plain
// processes, each pod in a network namespace wired through libcni (the node's
// first conflist, so a chained plugin a DaemonSet installs is called the way
// containerd calls it), each container in its own cgroup v2 and mount
// namespace with its volumes bind-mounted at their mountPath.
//
// A container's image is looked up in Config.Images (image name to local
// binary). How command and args become the process (see resolveCommand):
//   - no command: the image's binary with args;
//   - command[0] equal to the image binary's base name (any directory, e.g.
//     "/usr/local/bin/meshd" for image meshd): the image's binary;
//   - command[0] an absolute path that exists on the machine: that program;
//   - command[0] a bare name found on PATH (sh, cat, true): that program;
//   - anything else: the container fails to start with a message naming the
//     command and the image's binary.
//
// $(VAR) in command, args and env values is expanded as the real kubelet does.
//
// It is test infrastructure for a one-machine lab: it must not be used to run
// untrusted workloads (containers share the machine's root filesystem) and must
// never touch addresses, links, namespaces or cgroups it did not create.
package kubelet
