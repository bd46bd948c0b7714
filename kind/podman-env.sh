# Sourced by kind/*.sh: podman (and kind's podman provider) with its storage and
# configuration under ${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}/kind/podman, never the
# host's /etc/containers or /var/lib/containers.
#
# containers.conf: this machine's root lacks CAP_SYS_RESOURCE, and podman lowers its own
# hard RLIMIT_NPROC to 32768, so the default ulimits it asks runc for are refused
# (setrlimit: Operation not permitted): ask for what it can give. crun refuses hybrid
# cgroups ("cgroups in hybrid mode not supported"): use Debian's runc. Network
# configurations kind creates go to the cache too.
_kind_podman="${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}/kind/podman"
mkdir -p "$_kind_podman/net.d"
cat > "$_kind_podman/containers.conf.tmp" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[engine.runtimes]
runc = ["/usr/sbin/runc"]

[network]
network_config_dir = "$_kind_podman/net.d"
CONF
cat > "$_kind_podman/storage.conf.tmp" <<CONF
[storage]
driver = "overlay"
graphroot = "$_kind_podman/storage"
runroot = "$_kind_podman/run"
CONF
mv -f "$_kind_podman/containers.conf.tmp" "$_kind_podman/containers.conf"
mv -f "$_kind_podman/storage.conf.tmp" "$_kind_podman/storage.conf"
export CONTAINERS_CONF="$_kind_podman/containers.conf"
export CONTAINERS_STORAGE_CONF="$_kind_podman/storage.conf"
export KIND_EXPERIMENTAL_PROVIDER=podman
unset _kind_podman
