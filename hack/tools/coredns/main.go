// CoreDNS with only the plugins the local cluster needs, so the build skips
// the cloud SDKs the full distribution links: pods resolve
// *.svc.cluster.local from the API server and nothing else (no `forward`:
// no packet leaves the machine).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order plugins run in, as in CoreDNS's plugin.cfg.
var directives = []string{"bind", "ready", "health", "errors", "cache", "kubernetes"}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
