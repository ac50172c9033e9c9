package testutil

import (
	"os"
	"runtime"
	"testing"
)

func TestCgroup2Root(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("cgroup v2 is Linux only")
	}
	root, err := Cgroup2Root()
	if err != nil {
		SkipOrFail(t, err.Error())
	}
	if _, err := os.Stat(root + "/cgroup.controllers"); err != nil {
		t.Fatalf("Cgroup2Root() = %q, but it has no cgroup.controllers: %v", root, err)
	}
}
