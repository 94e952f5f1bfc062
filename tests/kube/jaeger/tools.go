//go:build tools

// Package tools names the Jaeger command scripts/jaeger-tool builds.
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
