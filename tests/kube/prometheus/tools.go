//go:build tools

// Package tools names the Prometheus command scripts/prometheus-tool builds.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
