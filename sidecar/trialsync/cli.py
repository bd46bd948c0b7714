"""The ``trialsync`` command."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from trialsync import logs
from trialsync._process.settings import ConfigError, parse, unknown_env

USAGE = """usage: trialsync sync --root DIR --upload-dir URI [options]   (trialsync sync --help)
       trialsync inject -f FILE [--syncconfig FILE] [-o yaml|json]   (trialsync inject --help)
       trialsync check-inject POD -n NS | -f FILE   (trialsync check-inject --help)"""
# Set by the project's own tooling, not settings of the sidecar.
_NOT_SETTINGS = {"TRIALSYNC_CACHE", "TRIALSYNC_TOOLS_BIN", "TRIALSYNC_KUBECONFIG"}


def use_plain_gcs_client_for_emulators() -> None:
    """Against a GCS emulator (STORAGE_EMULATOR_HOST), use gcsfs's plain HTTP client.

    gcsfs 2026.x first asks a gRPC API for each bucket's type; emulators do not serve it,
    so every bucket stalls for about a minute. The flag is read when gcsfs is imported, so
    this must run before anything imports it.
    """
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


#: Subcommands of the operator's package (``trialsync_operator.offline``): loaded only when
#: run, so the sidecar never imports the operator (its image need not carry its packages).
_OPERATOR_COMMANDS = {"inject": "inject_main", "check-inject": "check_main"}
_OPERATOR_MODULE = "trialsync_operator.offline.commands"


def _operator_command(name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(_OPERATOR_MODULE)
    except ImportError as exc:
        print(
            f"trialsync {name}: needs the operator's package, which is not installed here "
            f"({exc}): pip install 'trialsync[operator]'",
            file=sys.stderr,
        )
        return 2
    command = getattr(module, _OPERATOR_COMMANDS[name])
    code: int = command(argv)
    return code


def start_without_collecting() -> None:
    """Hold the garbage collector off until ``started()``.

    Starting allocates hundreds of thousands of objects that live as long as the process
    (modules, classes, the storage client's models): collecting meanwhile only traverses
    them again and again, about 15% of the imports' time, which a restore waits for.
    """
    gc.disable()


def started() -> None:
    """Freeze what starting made out of every later collection, and let the collector run."""
    gc.freeze()
    gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args[0] in _OPERATOR_COMMANDS:
        return _operator_command(args[0], args[1:])
    if args[0] != "sync":
        print(f"trialsync: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    use_plain_gcs_client_for_emulators()
    start_without_collecting()
    try:
        settings = parse(args[1:], os.environ)
    except ConfigError as exc:
        print(f"trialsync: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    for name in unknown_env(os.environ, _NOT_SETTINGS):
        logging.getLogger("trialsync").warning("unknown setting %s ignored", name)
    from trialsync._process import sidecar  # imported late: keeps --help and config errors fast

    started()
    try:
        return asyncio.run(sidecar.run(settings))
    except ConfigError as exc:
        print(f"trialsync: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
