// etcd for the test control plane: upstream etcd's own entry point, built from the module
// proxy by deployment/testenv/build.sh (etcd's server module has local replaces, so
// `go install` cannot build it directly).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
