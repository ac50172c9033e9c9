// Package testutil holds the helpers every meshlet test shares: the rules for
// tests that need root, the kernel or the lab, and the cleanup they owe.
//
// It must not hold assertions about meshlet itself; only the ground tests stand on.
package testutil

import (
	"os"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where a test that
// would skip for lack of root, kernel features or the lab must fail instead:
// a suite that skipped its kernel tests is a failed suite.
func InCI() bool {
	v := os.Getenv("CI")
	return v == "true" || v == "1"
}

// SkipOrFail skips the test with reason, or fails it under CI.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("cannot run under CI=true: %s", reason)
	}
	t.Skip(reason)
}

// RequireRoot skips (or under CI fails) a test that needs root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root (network namespaces, cgroups, BPF); run as root or via make test as root")
	}
}
