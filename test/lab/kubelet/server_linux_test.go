package kubelet

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSeekTail(t *testing.T) {
	long := strings.Repeat("x", 70<<10) // longer than one read chunk
	tests := []struct {
		name, content string
		n             int
		want          string
	}{
		{"last two of three", "a\nb\nc\n", 2, "b\nc\n"},
		{"more than there are", "a\nb\n", 5, "a\nb\n"},
		{"zero", "a\nb\n", 0, ""},
		{"no trailing newline", "a\nb\nc", 1, "c"},
		{"empty file", "", 3, ""},
		{"a line longer than a chunk", "first\n" + long + "\nlast\n", 2, long + "\nlast\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "c.log")
			if err := os.WriteFile(p, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := seekTail(f, tt.n); err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(f)
			if string(got) != tt.want {
				t.Errorf("tail %d of %q = %q; want %q", tt.n, trunc(tt.content), trunc(string(got)), trunc(tt.want))
			}
		})
	}
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:20] + "…" + s[len(s)-20:]
	}
	return s
}
