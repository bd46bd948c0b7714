"""``python -m localcluster up|down|status``: the local cluster for a shell.

``up`` starts a cluster that outlives the command (``make cluster-up``) and returns once the
node is Ready; it prints, on stdout, lines a shell can evaluate::

    KUBECONFIG=/root/.cache/trialsync/clusters/<id>/kubeconfig
    CLUSTER_NETNS=/proc/<pid>/ns/net
    CLUSTER_NET="nsenter --net=/proc/<pid>/ns/net --"

``kubectl`` works with that KUBECONFIG directly (the apiserver is forwarded to the host's
loopback); ``$CLUSTER_NET cmd`` runs ``cmd`` in the cluster's network, where pod and
Service addresses, cluster DNS (10.96.0.10) and the node address (10.231.0.2) answer. One
cluster per checkout: ``up`` again prints the running one; ``down`` stops it. Binaries and
images come from TRIALSYNC_TOOLS_BIN and TRIALSYNC_IMAGES (the Makefile sets both).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from localcluster import control
from localcluster.artifacts import image_manifest, node_bin_dir
from localcluster.control_plane import kubectl_path

#: Which instance this checkout started (the state lives in the shared cache).
POINTER = control.REPO_ROOT / ".cluster" / "state"


def _print_env(cluster: control.LocalCluster) -> None:
    print(f"KUBECONFIG={cluster.kubeconfig}")
    print(f"CLUSTER_NETNS={cluster.netns}")
    print(f"CLUSTER_NET={shlex.quote(shlex.join(cluster.netns_command([])))}")


def _current() -> control.LocalCluster | None:
    try:
        return control.attach(Path(POINTER.read_text().strip()))
    except (OSError, control.ClusterError):
        return None


def up() -> int:
    running = _current()
    if running is not None:
        print(f"cluster: already running ({running.state.instance_id})", file=sys.stderr)
        _print_env(running)
        return 0
    manifest = image_manifest()
    cluster = control.start(
        bin_dir=node_bin_dir(),
        kubectl=Path(kubectl_path()),
        images=[Path(entry["archive"]) for entry in manifest.values()],
        pause_image=manifest["pause"]["ref"],
        detach=True,
    )
    POINTER.parent.mkdir(exist_ok=True)
    POINTER.write_text(f"{cluster.files.state}\n")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.state.timings.items())
    print(
        f"cluster: node Ready in {cluster.startup_seconds:.1f}s ({timings}); "
        f"instance {cluster.state.instance_id}, logs in {cluster.files.logs}",
        file=sys.stderr,
    )
    print(f"images: {', '.join(e['ref'] for e in manifest.values())}", file=sys.stderr)
    _print_env(cluster)
    return 0


def down() -> int:
    running = _current()
    if running is None:
        print("cluster: none running for this checkout", file=sys.stderr)
    else:
        running.stop()
        print(f"cluster: stopped {running.state.instance_id}", file=sys.stderr)
    POINTER.unlink(missing_ok=True)
    removed = control.clean_dead_instances()
    if removed:
        print(f"cluster: removed leftovers of dead instances {removed}", file=sys.stderr)
    return 0


def status() -> int:
    running = _current()
    if running is None:
        print("cluster: none running for this checkout", file=sys.stderr)
        return 1
    print(json.dumps({**running.state.__dict__, "alive": running.alive()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster")
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    reason = control.unsupported_reason()
    if reason:
        print(f"cluster: {reason}", file=sys.stderr)
        return 1
    os.chdir(control.REPO_ROOT)
    try:
        return {"up": up, "down": down, "status": status}[args.command]()
    except control.ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
