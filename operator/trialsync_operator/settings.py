"""The one place where the operator's configuration is parsed and validated.

Every flag has an environment fallback (``--webhook-port`` reads
``TRIALSYNC_OPERATOR_WEBHOOK_PORT``); a flag wins over the environment. A misspelled flag
is fatal and a bad value is a configuration error before anything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from trialsync import contract
from trialsync_operator import __version__, quantity
from trialsync_operator.syncconfig import PULL_POLICIES, SidecarImage

ENV_PREFIX = "TRIALSYNC_OPERATOR_"
DEFAULT_IMAGE = f"docker.io/trialsync/sidecar:{__version__}"
#: What the default sidecar image serves (its extras are the contract's IMAGE_EXTRAS).
DEFAULT_SCHEMES = contract.IMAGE_SCHEMES
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """The operator's configuration is invalid; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What the operator injects where a SyncConfig says nothing (chart values)."""

    image: str
    pull_policy: str = "IfNotPresent"
    requests: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"cpu": "100m", "memory": "256Mi"}
    )
    limits: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"cpu": "1", "memory": "512Mi"}
    )
    scratch_size: str = "64Mi"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The operator's settings; see ``trialsync-operator --help`` for each."""

    namespaces: tuple[str, ...] = ()  # () = every namespace
    kubeconfig: str | None = None
    webhook_addr: str = "0.0.0.0"
    webhook_port: int = 9443
    health_addr: str = "0.0.0.0"
    health_port: int = 8080
    # Certificates: "self" (generated, kept in a Secret, caBundle kept right) or "files".
    cert_mode: str = "self"
    cert_dir: str = "/tmp/trialsync-webhook-certs"
    tls_secret: str = "trialsync-webhook-tls"
    cert_hosts: tuple[str, ...] = ()
    cert_validity_days: int = 365
    cert_rotate_before_days: int = 120
    cert_check_interval: float = 30.0
    mutating_webhook: str = "trialsync"
    validating_webhook: str = "trialsync"
    service: str = "trialsync-webhook"
    namespace: str = "trialsync-system"  # where the operator runs: leases, TLS Secret
    leader_election: bool = True
    lease_name: str = "trialsync-operator"
    identity: str = ""
    on_config_error: str = "refuse"  # or "admit" (unmodified, with a warning and an Event)
    sidecar: SidecarImage = dataclasses.field(
        default_factory=lambda: SidecarImage(DEFAULT_IMAGE, frozenset(DEFAULT_SCHEMES))
    )
    defaults: Defaults = dataclasses.field(default_factory=lambda: Defaults(image=DEFAULT_IMAGE))
    log_level: str = "info"
    # The leader polls each opted-in pod's sidecar for GET /status (reconcile.pod_status).
    pod_status: bool = True
    pod_status_port: int = contract.HTTP_PORT


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trialsync-operator",
        description="The trialsync operator: SyncConfig reconciliation and sidecar injection.",
        allow_abbrev=False,
    )
    a = p.add_argument
    a(
        "--watch-namespace",
        action="append",
        dest="namespaces",
        metavar="NAMESPACE",
        help="watch only this namespace (repeatable; default: every namespace)",
    )
    a("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)")
    a("--webhook-addr", help="address the admission webhooks listen on (default 0.0.0.0)")
    a("--webhook-port", type=int, help="port of the admission webhooks (default 9443)")
    a("--health-addr", help="address of /healthz and /readyz (default 0.0.0.0)")
    a("--health-port", type=int, help="port of /healthz and /readyz (default 8080)")
    a(
        "--cert-mode",
        choices=["self", "files"],
        help="self (default): generate, rotate and publish the webhook certificate; files: "
        "read tls.crt/tls.key from --cert-dir (e.g. cert-manager)",
    )
    a("--cert-dir", help="directory of tls.crt and tls.key (default /tmp/trialsync-webhook-certs)")
    a("--tls-secret", help="Secret holding the webhook CA and certificate (self mode)")
    a(
        "--cert-host",
        action="append",
        dest="cert_hosts",
        metavar="HOST",
        help="extra DNS name or IP for the serving certificate (repeatable)",
    )
    a("--cert-validity-days", type=int, help="serving certificate lifetime (default 365)")
    a("--cert-rotate-before-days", type=int, help="rotate this long before expiry (default 120)")
    a(
        "--cert-check-interval",
        type=float,
        help="seconds between the leader's checks of the certificate (default 30)",
    )
    a(
        "--mutating-webhook",
        help="MutatingWebhookConfiguration whose caBundle to keep right (its namespaceSelector "
        "also bounds the missed-injection scan)",
    )
    a("--validating-webhook", help="ValidatingWebhookConfiguration whose caBundle to keep right")
    a("--service", help="the webhook Service's name (for the certificate's DNS names)")
    a(
        "--namespace",
        help="the operator's own namespace (default: the pod's, else trialsync-system)",
    )
    a(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        help="one replica reconciles, every replica serves webhooks (default true)",
    )
    a("--lease-name", help="the Lease used for leader election (default trialsync-operator)")
    a("--identity", help="this replica's identity in the Lease (default: the pod name)")
    a(
        "--on-config-error",
        choices=["refuse", "admit"],
        help="a pod naming a missing or invalid SyncConfig: refuse (default) or admit it "
        "unmodified with a warning and an Event",
    )
    a("--sidecar-image", help=f"the sidecar image (default {DEFAULT_IMAGE})")
    a("--sidecar-image-pull-policy", choices=list(PULL_POLICIES), help="default IfNotPresent")
    a(
        "--allowed-sidecar-image",
        action="append",
        dest="allowed_sidecar_images",
        metavar="IMAGE",
        help="an image a SyncConfig's spec.sidecar.image may name besides --sidecar-image; "
        "a trailing * allows a prefix, e.g. registry.example.com/team/* (repeatable; "
        "default: only --sidecar-image)",
    )
    a(
        "--sidecar-schemes",
        help=f"URI schemes the sidecar image serves, comma-separated "
        f"(default {','.join(DEFAULT_SCHEMES)})",
    )
    a(
        "--sidecar-resources",
        help='default sidecar resources as JSON: {"requests": {...}, "limits": {...}}',
    )
    a(
        "--pod-status",
        action=argparse.BooleanOptionalAction,
        help="the leader polls the sidecars' GET /status at their pod IPs and counts each "
        "SyncConfig's pods in its status (default true; off where a NetworkPolicy keeps "
        "the operator from the pods)",
    )
    a(
        "--pod-status-port",
        type=int,
        help=f"the sidecars' status port the leader polls (default {contract.HTTP_PORT}, "
        "where the injected sidecar serves it)",
    )
    a("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    return p


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """``TRIALSYNC_OPERATOR_*`` variables that match no flag: likely typos."""
    known = {ENV_PREFIX + a.dest.upper() for a in _parser()._actions if a.dest != "help"}
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings from flags, then ``TRIALSYNC_OPERATOR_*`` variables, then defaults."""
    parser = _parser()
    args = vars(parser.parse_args(list(argv)))
    values: dict[str, Any] = {}
    for action in parser._actions:
        dest = action.dest
        if dest == "help":
            continue
        given = args.get(dest)
        if given is not None:
            values[dest] = given
            continue
        raw = environ.get(ENV_PREFIX + dest.upper())
        if raw:
            values[dest] = _from_env(action, raw)
    return _build(values, environ)


def _from_env(action: argparse.Action, raw: str) -> Any:
    name = ENV_PREFIX + action.dest.upper()
    if isinstance(action, argparse.BooleanOptionalAction):
        lowered = raw.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise ConfigError(f"{name}={raw!r}: expected true or false")
    if action.type in (int, float):
        try:
            return action.type(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r}: expected a number") from exc
    if action.choices is not None and raw not in action.choices:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(map(str, action.choices))}")
    if isinstance(action, argparse._AppendAction):
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _build(values: dict[str, Any], environ: Mapping[str, str]) -> Settings:
    for name in ("webhook_port", "health_port", "pod_status_port"):
        if name in values and not 0 < values[name] < 65536:
            raise ConfigError(f"--{name.replace('_', '-')} must be a port number (1-65535)")
    if values.get("cert_check_interval", 1.0) <= 0:
        raise ConfigError("--cert-check-interval must be positive")
    validity = values.get("cert_validity_days", Settings.cert_validity_days)
    rotate = values.get("cert_rotate_before_days", Settings.cert_rotate_before_days)
    if not 0 < rotate < validity:
        raise ConfigError(
            "--cert-rotate-before-days must be positive and less than --cert-validity-days"
        )
    image = values.pop("sidecar_image", DEFAULT_IMAGE)
    pull_policy = values.pop("sidecar_image_pull_policy", "IfNotPresent")
    allowed = tuple(values.pop("allowed_sidecar_images", None) or ())
    for entry in allowed:
        if not entry or any(c.isspace() for c in entry) or "*" in entry[:-1]:
            raise ConfigError(
                f"--allowed-sidecar-image {entry!r}: expected an image reference, or a prefix "
                "of one followed by a single trailing * (e.g. registry.example.com/team/*)"
            )
    schemes = values.pop("sidecar_schemes", ",".join(DEFAULT_SCHEMES))
    scheme_set = frozenset(s.strip().lower() for s in schemes.split(",") if s.strip())
    if not scheme_set or not all(re.match(r"^[a-z][a-z0-9+.-]*$", s) for s in scheme_set):
        raise ConfigError(f"--sidecar-schemes {schemes!r}: expected e.g. s3,gs,file")
    defaults = Defaults(image=image, pull_policy=pull_policy)
    if "sidecar_resources" in values:
        defaults = _with_resources(defaults, values.pop("sidecar_resources"))
    namespace = values.pop("namespace", None) or environ.get("POD_NAMESPACE") or "trialsync-system"
    identity = values.pop("identity", None) or environ.get("POD_NAME") or os.uname().nodename
    given: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return Settings(
        **given,
        namespace=namespace,
        identity=identity,
        sidecar=SidecarImage(image, scheme_set, pull_policy, allowed),
        defaults=defaults,
    )


def _with_resources(defaults: Defaults, raw: str) -> Defaults:
    try:
        given = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"--sidecar-resources is not JSON: {exc}") from exc
    if not isinstance(given, dict) or set(given) - {"requests", "limits"}:
        raise ConfigError('--sidecar-resources must be {"requests": {...}, "limits": {...}}')
    parts: dict[str, dict[str, str]] = {}
    for part in ("requests", "limits"):
        amounts = given.get(part, {})
        if not isinstance(amounts, dict):
            raise ConfigError(f"--sidecar-resources: {part} must be an object")
        for resource, amount in amounts.items():
            try:
                quantity.parse(str(amount))
            except ValueError as exc:
                raise ConfigError(f"--sidecar-resources: {part}.{resource}: {exc}") from exc
        parts[part] = {str(k): str(v) for k, v in amounts.items()}
    requests = parts.get("requests", dict(defaults.requests))
    limits = parts.get("limits", dict(defaults.limits))
    for resource in ("cpu", "memory"):
        if resource not in requests or resource not in limits:
            raise ConfigError(
                f"--sidecar-resources must set requests and limits of {resource}: the "
                "sidecar always carries both (quotas and LimitRanges refuse it otherwise)"
            )
    return dataclasses.replace(defaults, requests=requests, limits=limits)
