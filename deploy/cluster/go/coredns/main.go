// Command coredns is CoreDNS with the few plugins the local cluster's DNS needs.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// Only these plugins: the stock build pulls in every cloud provider's SDK.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func init() {
	// The order in which plugins handle a query, as in CoreDNS's plugin.cfg.
	dnsserver.Directives = []string{
		"bind", "ready", "errors", "cache", "template", "kubernetes",
	}
}

func main() {
	coremain.Run()
}
