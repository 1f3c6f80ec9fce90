//go:build tools

// Package tools pins the KEDA operator main package for 'go mod tidy'.
package tools

import _ "github.com/kedacore/keda/v2/cmd/operator"
