// Command etcd is the upstream etcd server, built from the version pinned in
// tools/go.mod so the test control plane needs no downloaded release binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
