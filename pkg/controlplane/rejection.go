package controlplane

import "fmt"

// Rejection reports an object the builder found fault with.
type Rejection struct {
	// Kind is the object's kind (one of the Kind* constants).
	Kind string
	// Namespace and Name identify the object; Namespace is empty for cluster-scoped kinds.
	Namespace string
	Name      string
	// Reason says what is wrong and, where it helps, how to fix it.
	Reason string
	// Warning is true when the object was still used (for example a selector
	// that matches nothing yet); false means the object was skipped.
	Warning bool
}

// String renders the rejection for a log line.
func (r Rejection) String() string {
	sev := "rejected"
	if r.Warning {
		sev = "warning"
	}
	return fmt.Sprintf("%s %s %s/%s: %s", sev, r.Kind, r.Namespace, r.Name, r.Reason)
}

// rejections collects faults for one object while it is translated.
type rejections struct {
	kind, namespace, name string
	out                   *[]Rejection
	failed                bool
}

func (b *rejections) reject(format string, args ...any) {
	b.failed = true
	*b.out = append(*b.out, Rejection{Kind: b.kind, Namespace: b.namespace, Name: b.name, Reason: fmt.Sprintf(format, args...)})
}

func (b *rejections) warn(format string, args ...any) {
	*b.out = append(*b.out, Rejection{Kind: b.kind, Namespace: b.namespace, Name: b.name, Reason: fmt.Sprintf(format, args...), Warning: true})
}
