package kubelet

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// imageName strips the tag and digest from an image reference:
// "registry:5000/a/b:v1@sha256:..." -> "registry:5000/a/b".
func imageName(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// imagePullError is a container's ErrImagePull: the image is not in the table.
type imagePullError struct{ image string }

func (e *imagePullError) Error() string {
	return fmt.Sprintf("image %q is not in the lab's image table (.lab/images.json): the lab runs only locally built binaries; add it to the table or use one of its images", e.image)
}

// resolveImage maps an image reference to its binary, ignoring tag and digest.
func resolveImage(images map[string]string, ref string) (string, error) {
	if bin, ok := images[ref]; ok {
		return bin, nil
	}
	name := imageName(ref)
	for k, bin := range images {
		if imageName(k) == name {
			return bin, nil
		}
	}
	return "", &imagePullError{image: ref}
}

// resolveImageFile looks ref up in the JSON image table at path, returning
// miss when there is no table or ref is not in it.
func resolveImageFile(path, ref string, miss error) (string, error) {
	if path == "" {
		return "", miss
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", miss
	}
	images := map[string]string{}
	if err := json.Unmarshal(b, &images); err != nil {
		return "", fmt.Errorf("parse image table %s: %w", path, err)
	}
	for img, bin := range images {
		if !filepath.IsAbs(bin) {
			return "", fmt.Errorf("image table %s maps %q to %q: want an absolute path of a binary", path, img, bin)
		}
	}
	return resolveImage(images, ref)
}

// resolveCommand turns an image binary, command and args into the program to
// execute and its argv, by the rule in the package documentation.
func resolveCommand(binary string, command, args []string) (path string, argv []string, err error) {
	if len(command) == 0 {
		return binary, append([]string{binary}, args...), nil
	}
	argv = append(append([]string{}, command...), args...)
	c0 := command[0]
	switch {
	case filepath.Base(c0) == filepath.Base(binary):
		return binary, argv, nil
	case filepath.IsAbs(c0):
		if st, err := os.Stat(c0); err == nil && !st.IsDir() {
			return c0, argv, nil
		}
	case !strings.Contains(c0, "/"):
		if p, err := exec.LookPath(c0); err == nil {
			return p, argv, nil
		}
	}
	return "", nil, fmt.Errorf("command %q not found: the image's binary is %s; use its name (%q), an absolute path that exists or a program on PATH", c0, binary, filepath.Base(binary))
}
