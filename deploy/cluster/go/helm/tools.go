//go:build tools

// Package helm only records that the cluster builds helm's command.
package helm

import _ "helm.sh/helm/v3/cmd/helm"
