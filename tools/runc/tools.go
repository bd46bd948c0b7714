//go:build tools

// Package tools pins runc, built by ../build.sh with cgo and libseccomp (seccomp profiles,
// e.g. RuntimeDefault, need it). Its own module, so its dependencies are exactly those of
// the runc release.
package tools

import (
	_ "github.com/opencontainers/runc"
)
