//go:build tools

// Package tools names the h2spec command scripts/h2spec-tool builds.
package tools

import _ "github.com/summerwind/h2spec/cmd/h2spec"
