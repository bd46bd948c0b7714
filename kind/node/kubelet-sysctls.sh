#!/bin/sh
# Run by systemd before the kubelet (12-trialsync.conf). The kubelet sets six sysctls that
# are not per network namespace, and a privileged node can write them: it would change the
# host's kernel.panic, kernel.panic_on_oops and vm.overcommit_memory. Inside the node's
# own mount namespace only, a file holding the value the kubelet wants is bind-mounted
# over each entry; the kubelet reads its value there and writes nothing to the host.
set -eu
dir=/run/kubelet-sysctls
mkdir -p "$dir"
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
    kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
    entry="/proc/sys/${kv%%=*}"
    file="$dir/$(echo "${kv%%=*}" | tr / .)"
    mountpoint -q "$entry" && continue
    echo "${kv#*=}" > "$file"
    mount --bind "$file" "$entry"
done
