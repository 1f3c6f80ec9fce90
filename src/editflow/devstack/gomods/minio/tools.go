//go:build tools

// Package tools pins the minio server main package for 'go mod tidy'.
package tools

import _ "github.com/minio/minio"
