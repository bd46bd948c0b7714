//go:build tools

// Package tools pins Prometheus and promtool, built by ../build.sh for the monitoring tests.
// Its own module: Prometheus requires other k8s.io and client library versions than ../go.mod.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
