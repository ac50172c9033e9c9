// Package labtest holds the lab's end-to-end tests: a real 2-node cluster on
// this machine (root only), shared by every test in the process, one
// namespace per test.
package labtest

import (
	"os"
	"testing"

	"github.com/meshlet/meshlet/test/lab"
)

func TestMain(m *testing.M) { os.Exit(lab.Main(m)) }
