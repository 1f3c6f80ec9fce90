//go:build tools

// Package tools pins the registry command for 'go mod tidy'.
package tools

import _ "github.com/distribution/distribution/v3/cmd/registry"
