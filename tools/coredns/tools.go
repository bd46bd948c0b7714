//go:build tools

// Package tools pins CoreDNS, the local cluster's DNS server, built by ../build.sh. Its own
// module: CoreDNS requires older k8s.io staging modules than ../go.mod.
package tools

import (
	_ "github.com/coredns/coredns"
)
