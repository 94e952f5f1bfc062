//go:build tools

// Package tools names the etcd server command scripts/kube-tools builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
