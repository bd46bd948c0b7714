"""What the launcher runs, handed over as ``plan.json`` in the state directory.

The host side (:mod:`.prepare`) decides everything: certificates, configuration files,
command lines. The launcher, which runs inside the namespaces as their pid 1, only
executes the plan; it imports nothing outside the standard library and this package's
light modules, so it starts fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from localcluster.components import Component


@dataclass(frozen=True)
class Plan:
    """Everything the launcher needs; paths are absolute strings."""

    root: str
    api_port: int
    bin_dir: str
    kubectl: str
    #: OCI archives to import into containerd before the node is reported ready.
    images: list[str]
    components: dict[str, Component]
    #: Inherited descriptors: a listening socket on the host's 127.0.0.1:api_port; the write
    #: end of a pipe on which the launcher reports ``ready`` or why it failed; the instance's
    #: lock file, locked for as long as the launcher lives.
    api_listener_fd: int
    report_fd: int
    lock_fd: int

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Plan:
        raw = json.loads(path.read_text())
        raw["components"] = {
            name: Component(name=c["name"], argv=list(c["argv"]), env=dict(c["env"]))
            for name, c in raw["components"].items()
        }
        return cls(**raw)
