//go:build tools

// Package tools pins KubeRay's ray-operator, built by ../build.sh, and with it the CRDs of
// RayCluster and RayJob. It is its own module because KubeRay requires older k8s.io
// modules than ../go.mod; its main package is the module's root.
package tools

import (
	_ "github.com/ray-project/kuberay/ray-operator"
)
