//go:build !linux

package lab

import (
	"context"
	"errors"
	"io"
	"time"
)

var errLinuxOnly = errors.New("the lab needs Linux (network namespaces, cgroup v2, bpffs)")

// UpOptions configures Up.
type UpOptions struct {
	Layout  Layout        // the lab's .lab directory
	Nodes   int           // number of nodes
	Self    string        // absolute path of the lab binary
	Out     io.Writer     // progress output
	Timeout time.Duration // readiness timeout
	Owner   int           // pid whose end takes the lab down
}

// DownOptions configures Down.
type DownOptions struct {
	Layout Layout    // the lab's .lab directory
	Out    io.Writer // progress output
}

// SuperviseOptions configures the supervisor process.
type SuperviseOptions struct {
	Layout Layout // the lab's .lab directory
	Nodes  int    // number of nodes
	Tools  string // directory of the upstream binaries
	Self   string // absolute path of the lab binary
	Owner  int    // pid whose end takes the lab down
}

// ErrAnotherLab is returned by Up when a lab from another directory runs.
var ErrAnotherLab = errors.New("another lab is running")

// Up needs Linux.
func Up(context.Context, UpOptions) error { return errLinuxOnly }

// Down needs Linux.
func Down(DownOptions) error { return errLinuxOnly }

// Supervise needs Linux.
func Supervise(context.Context, SuperviseOptions) error { return errLinuxOnly }

// Status needs Linux.
func Status(context.Context, Layout, io.Writer) error { return errLinuxOnly }

// supervisorPid: no lab runs off Linux.
func supervisorPid(Layout) int { return 0 }
