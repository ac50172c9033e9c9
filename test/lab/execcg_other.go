//go:build !linux

package lab

import (
	"errors"
	"os/exec"
)

func inCgroup(*exec.Cmd, string) (func(), error) {
	return nil, errors.New("cgroups are Linux only")
}
