//go:build tools

// Package tools pins the CNI plugins the local cluster's containerd runs, built by
// ../build.sh: bridge and host-local give pods an address on the node, portmap serves
// hostPort, loopback brings up each pod's lo.
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
