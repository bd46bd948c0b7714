//go:build tools

// Package tools pins containerd, ctr and the runc shim, built by ../build.sh. It is its own
// module because containerd requires older k8s.io staging modules than ../go.mod, which
// would otherwise lift them past what containerd was released and tested with.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
