"""The ``trialsync-operator`` command: kopf with trialsync's settings (``kopf run`` is not
the interface; every setting is a flag with a ``TRIALSYNC_OPERATOR_*`` fallback)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from trialsync import logs
from trialsync_operator.settings import ConfigError, parse, unknown_env


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = parse(args, os.environ)
    except ConfigError as exc:
        print(f"trialsync-operator: configuration error: {exc}", file=sys.stderr)
        return 2
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # read by kopf's login and ours alike
    logs.setup(settings.log_level)
    logging.getLogger("kopf").setLevel(max(logging.INFO, logging.getLogger().level))
    for name in unknown_env(os.environ):
        logging.getLogger("trialsync_operator").warning("unknown setting %s ignored", name)
    logging.getLogger("trialsync_operator").info(
        "trialsync operator starting",
        extra={
            "namespaces": list(settings.namespaces) or "all",
            "webhook_port": settings.webhook_port,
            "cert_mode": settings.cert_mode,
            "identity": settings.identity,
            "sidecar_image": settings.sidecar.image,
        },
    )
    from trialsync_operator import app  # kopf loads here: --help and config errors stay fast

    asyncio.run(app.run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
