package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain runs main instead of the tests when re-executed by meshctl below,
// so the tests drive the real binary: its exit codes and its stderr.
func TestMain(m *testing.M) {
	if os.Getenv("MESHCTL_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// meshctl runs this test binary as meshctl with args, stdin from /dev/null.
func meshctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "MESHCTL_TEST_MAIN=1", "KUBECONFIG="+filepath.Join(t.TempDir(), "none"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string // "" means stderr must be empty
		wantStdout string
	}{
		{"analyze clean", []string{"analyze", "-f", "../../pkg/cli/testdata/analyze/clean"}, 0, "", "✔ No problems found."},
		{"analyze errors exit 1 and print findings only", []string{"analyze", "-f", "../../pkg/cli/testdata/analyze/removed-api"}, 1, "", "removed since Kubernetes 1.16"},
		{"install without a TTY refuses", []string{"install"}, 1, `meshctl: refusing to change the cluster without confirmation: stdin is not a terminal; rerun as "meshctl install -y"`, "Plan: install meshlet, profile default"},
		{"unknown command", []string{"instal"}, 1, `meshctl: unknown command "instal"`, ""},
		{"version", []string{"version", "--client"}, 0, "", "client version: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := meshctl(t, tc.args...)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; stderr: %s", code, tc.wantCode, errOut)
			}
			if tc.wantStderr == "" && errOut != "" || !strings.Contains(errOut, tc.wantStderr) {
				t.Errorf("stderr %q, want %q", errOut, tc.wantStderr)
			}
			if !strings.Contains(out, tc.wantStdout) {
				t.Errorf("stdout %q, want it to contain %q", out, tc.wantStdout)
			}
		})
	}
}
