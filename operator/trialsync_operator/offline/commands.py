"""``trialsync inject`` and ``trialsync check-inject``: argument parsing, where the facts
come from (files or the cluster), and the output. Exit codes: 0 injected (or would be),
1 not, 2 a usage or input error."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from trialsync import contract
from trialsync_operator import names, settings
from trialsync_operator.admission import patch
from trialsync_operator.offline import documents
from trialsync_operator.offline.checks import CHART_WEBHOOK, Facts, Report, Webhook, assess
from trialsync_operator.settings import Settings
from trialsync_operator.syncconfig import ConfigView, view_of

if TYPE_CHECKING:
    from trialsync_operator.offline import live

JsonDict = dict[str, Any]
USAGE_ERROR = 2
#: The operator's flags that change what it injects or whom: given to ``inject`` and
#: ``check-inject``, they are parsed by the operator's own parser.
OPERATOR_FLAGS = (
    ("--sidecar-image", False),
    ("--sidecar-image-pull-policy", False),
    ("--sidecar-schemes", False),
    ("--sidecar-resources", False),
    ("--allowed-sidecar-image", True),
    ("--on-config-error", False),
    ("--watch-namespace", True),
)


class UsageError(Exception):
    """Wrong arguments or unreadable input: exit 2 with the message."""


def inject_main(argv: Sequence[str], stdin: TextIO | None = None) -> int:
    """``trialsync inject -f FILE``: the objects as the webhook would make their pods."""
    parser = _parser("inject", "print what the webhook would make of each object's pods")
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    try:
        args = parser.parse_args(list(argv))
        if args.filename is None:
            raise UsageError("give the objects with -f FILE (- for stdin)")
        objects, facts_for = _objects_and_facts(args, stdin)
    except SystemExit as exc:
        return int(exc.code or 0)
    except (UsageError, documents.InputError, settings.ConfigError) as exc:
        print(f"trialsync inject: {exc}", file=sys.stderr)
        return USAGE_ERROR
    out: list[JsonDict] = []
    for obj in objects:
        out.append(_inject_one(obj, args.namespace_or_default, facts_for))
    sys.stdout.write(documents.dump(out, args.output))
    return 0


def _objects_and_facts(
    args: argparse.Namespace, stdin: TextIO | None
) -> tuple[list[JsonDict], FactsFor]:
    """The objects of ``-f``, and where the facts about their namespaces come from (read
    from the cluster once, before any is assessed)."""
    objects = documents.load(_read(args.filename, stdin), args.filename)
    facts_for = _facts_source(args, objects)
    _prefetch(facts_for, objects, args.namespace_or_default)
    return objects, facts_for


def _inject_one(obj: JsonDict, default_namespace: str, facts_for: FactsFor) -> JsonDict:
    if obj.get("kind") == names.KIND:
        return obj
    namespace = documents.namespace_of(obj, default_namespace)
    found = documents.templates(obj, namespace)
    if not found:
        print(
            f"{documents.describe(obj, namespace)}: unchanged: it has no pod template",
            file=sys.stderr,
        )
        return obj
    for template in found:
        where = documents.describe(obj, namespace, template)
        report = assess(template.pod, namespace, facts_for(namespace))
        if not report.ops:
            print(f"{where}: unchanged: {report.outcome}", file=sys.stderr)
            continue
        for warning in report.warnings:
            print(f"{where}: warning: {warning}", file=sys.stderr)
        injected = patch.apply(documents.template_at(obj, template.path), report.ops)
        if template.per_pod and _restores(injected):
            print(f"{where}: note: {template.per_pod}", file=sys.stderr)
        obj = documents.replace_at(obj, template.path, injected)
    return obj


def _restores(template: Mapping[str, Any]) -> bool:
    """Whether the injected sidecar restores on start: only then does it depend on the
    pod's identity (its owner key), which differs between a template's pods."""
    spec = template.get("spec") or {}
    return any(
        e.get("name") == contract.RESTORE.env
        for c in spec.get("initContainers") or []
        if c.get("name") == names.SIDECAR_NAME
        for e in c.get("env") or []
    )


def check_main(argv: Sequence[str], stdin: TextIO | None = None) -> int:
    """``trialsync check-inject POD -n NS`` or ``-f FILE``: why a pod is, or would be,
    injected or not, one line per check."""
    parser = _parser("check-inject", "say whether and why a pod is or would be injected")
    parser.add_argument("pod", nargs="?", help="a live pod's name (with -n)")
    try:
        args = parser.parse_args(list(argv))
        if (args.pod is None) == (args.filename is None):
            raise UsageError("give a pod's name or -f FILE, one of them")
        if args.pod is not None and args.syncconfig:
            raise UsageError(
                "--syncconfig is for -f FILE: a live pod is checked against the cluster"
            )
        if args.pod is not None:
            return _check_live(args)
        objects, facts_for = _objects_and_facts(args, stdin)
    except SystemExit as exc:
        return int(exc.code or 0)
    except (UsageError, documents.InputError, settings.ConfigError) as exc:
        print(f"trialsync check-inject: {exc}", file=sys.stderr)
        return USAGE_ERROR
    pods = [
        (obj, template)
        for obj in objects
        if obj.get("kind") != names.KIND
        for template in documents.templates(
            obj, documents.namespace_of(obj, args.namespace_or_default)
        )
    ]
    if not pods:
        print(
            f"trialsync check-inject: {args.filename} holds no pod or pod template", file=sys.stderr
        )
        return USAGE_ERROR
    every = True
    for obj, template in pods:
        namespace = documents.namespace_of(obj, args.namespace_or_default)
        if len(pods) > 1:
            print(f"{documents.describe(obj, namespace, template)}:")
        report = assess(template.pod, namespace, facts_for(namespace))
        _print(report)
        every = every and report.injected
    return 0 if every else 1


FactsFor = Callable[[str], Facts]


def _prefetch(facts_for: FactsFor, objects: Sequence[Mapping[str, Any]], default: str) -> None:
    """The facts of every namespace the objects are in, before any output: a cluster that
    cannot be read is a usage error, not half an output."""
    for obj in objects:
        if obj.get("kind") != names.KIND:
            facts_for(documents.namespace_of(obj, default))


def _print(report: Report) -> None:
    for line in report.lines():
        print(line)


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"trialsync {command}",
        description=description,
        epilog="exit 0: injected (or would be); 1: not; 2: a usage or input error"
        if command == "check-inject"
        else "exit 0; 2: a usage or input error (objects not injected are printed unchanged)",
        allow_abbrev=False,
    )
    parser.add_argument(
        "-f", "--filename", help="a file of objects (YAML, several documents, or JSON); - for stdin"
    )
    parser.add_argument(
        "-n", "--namespace", help="the namespace of objects that name none (default: the context's)"
    )
    parser.add_argument(
        "--syncconfig",
        action="append",
        metavar="FILE",
        help="read SyncConfigs from this file instead of the cluster (repeatable; offline)",
    )
    parser.add_argument(
        "--kubeconfig", help="the kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    parser.add_argument("--context", help="the kubeconfig context (default: the current one)")
    group = parser.add_argument_group(
        "the operator's settings (default: read from the operator's pod, else its defaults)"
    )
    for flag, repeatable in OPERATOR_FLAGS:
        group.add_argument(
            flag,
            action="append" if repeatable else "store",
            dest=_dest(flag),
            metavar="VALUE",
            help=f"as trialsync-operator {flag}{' (repeatable)' if repeatable else ''}",
        )
    return parser


def _dest(flag: str) -> str:
    return "op_" + flag.lstrip("-").replace("-", "_")


def _operator_flags(args: argparse.Namespace) -> list[str]:
    flags: list[str] = []
    for flag, repeatable in OPERATOR_FLAGS:
        value = getattr(args, _dest(flag))
        for item in (value or []) if repeatable else ([value] if value is not None else []):
            flags.append(f"{flag}={item}")
    return flags


def _read(filename: str, stdin: TextIO | None) -> str:
    if filename == "-":
        return (stdin or sys.stdin).read()
    try:
        return Path(filename).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {filename}: {exc.strerror}") from None


def _facts_source(args: argparse.Namespace, objects: Sequence[Mapping[str, Any]]) -> FactsFor:
    """Offline (``--syncconfig``, or SyncConfigs in the input itself with no cluster
    wanted) or from the cluster; sets ``args.namespace_or_default``."""
    flags = _operator_flags(args)
    operator = settings.parse(flags, {})
    inline = [o for o in objects if o.get("kind") == names.KIND]
    if args.syncconfig:
        configs = [*inline]
        for path in args.syncconfig:
            configs += [
                o for o in documents.load(_read(path, None), path) if o.get("kind") == names.KIND
            ]
        if not configs:
            raise UsageError(f"no SyncConfig in {', '.join(args.syncconfig)}")
        args.namespace_or_default = args.namespace or "default"
        source = f"not in {', '.join(args.syncconfig)}"
        return _offline(configs, operator, args.namespace_or_default, source, bool(flags))
    return _from_cluster(args, flags)


def _offline(
    configs: Sequence[Mapping[str, Any]],
    operator: Settings,
    default_namespace: str,
    source: str,
    flags_given: bool,
) -> FactsFor:
    """Facts from SyncConfig files: a SyncConfig that names no namespace is in the one
    it would be applied to (``-n``, else default), like ``kubectl apply -f``."""
    views: dict[tuple[str, str], ConfigView] = {}
    ready: dict[tuple[str, str], Mapping[str, Any]] = {}
    for config in configs:
        body = {**config, "metadata": {**(config.get("metadata") or {})}}
        body["metadata"].setdefault("namespace", default_namespace)
        view = view_of(body, operator.sidecar)
        views[view.key] = view
        if not view.uid:
            print(
                f"note: SyncConfig {view.namespace}/{view.name} has no metadata.uid (it was "
                "not read from the cluster): the status annotation, and a head-node Secret's "
                "name, differ from what the cluster's gives",
                file=sys.stderr,
            )
        condition = _ready_condition(body)
        if condition is not None:
            ready[view.key] = condition
    described = "the flags given" if flags_given else "the operator's defaults"
    facts = Facts(
        settings=operator,
        lookup=lambda namespace, name: views.get((namespace, name)),
        ready=lambda namespace, name: ready.get((namespace, name)),
        source=source,
        settings_source=f"{described} (offline: the cluster's operator may differ)",
        settings_known=False,
    )
    return lambda namespace: facts


def _from_cluster(args: argparse.Namespace, flags: list[str]) -> FactsFor:
    """Facts read from the cluster once per namespace (before any output)."""
    try:
        from trialsync_operator import kube
        from trialsync_operator.offline import live
    except ImportError as exc:
        raise UsageError(
            f"reading the cluster needs the operator's packages ({exc}): pip install "
            "'trialsync[operator]', or give --syncconfig FILE to work offline"
        ) from None
    try:
        config, context_namespace = live.load(args.kubeconfig, args.context)
    except Exception as exc:  # the kubernetes package's loaders raise many kinds
        raise UsageError(
            f"no cluster to read: {exc}; give --syncconfig FILE to work offline"
        ) from None
    args.namespace_or_default = args.namespace or context_namespace
    cache: dict[str, Facts] = {}

    async def gather(namespace: str) -> Facts:
        client = kube.Kube(config)
        try:
            cluster = live.Cluster(client)
            return await _cluster_facts(cluster, namespace, flags)
        finally:
            await client.close()

    def facts_for(namespace: str) -> Facts:
        if namespace not in cache:
            try:
                cache[namespace] = asyncio.run(gather(namespace))
            except (kube.ApiError, OSError, TimeoutError) as exc:
                raise UsageError(f"reading the cluster failed: {exc}") from None
        return cache[namespace]

    return facts_for


async def _cluster_facts(cluster: live.Cluster, namespace: str, flags: list[str]) -> Facts:
    from trialsync_operator import kube

    labels = await cluster.namespace_labels(namespace)
    operator = settings.parse(flags, {})
    source = "the operator's defaults" + (" and the flags given" if flags else "")
    webhook: Webhook | None
    try:
        webhook = await cluster.webhook_for(namespace, labels)
    except kube.ApiError as exc:
        # Reading webhook configurations is cluster-wide: many users may not.
        webhook = CHART_WEBHOOK
        source += f"; the webhook configurations cannot be read ({exc}): the chart's defaults"
    known = False
    endpoints = None
    if webhook is not None and webhook.service is not None:
        read = await cluster.operator_settings(webhook.service, flags)
        if read is not None:
            operator, pod = read
            source = f"the arguments of operator pod {pod}" + (
                ", and the flags given" if flags else ""
            )
            known = True
        else:
            source += f" (no operator pod behind Service {'/'.join(webhook.service)} could be read)"
        endpoints = await cluster.ready_endpoints(webhook.service)
    elif webhook is not None and webhook.url:
        source += f" (the webhook calls {webhook.url}: no operator pod to read)"
    configs = await cluster.syncconfigs(namespace)
    views = {name: view_of(body, operator.sidecar) for name, body in configs.items()}
    conditions = {name: _ready_condition(body) for name, body in configs.items()}
    return Facts(
        settings=operator,
        lookup=lambda ns, name: views.get(name) if ns == namespace else None,
        webhook=webhook,
        namespace_labels=labels,
        ready=lambda ns, name: conditions.get(name) if ns == namespace else None,
        ready_endpoints=endpoints,
        source="in the cluster",
        settings_source=source,
        settings_known=known or bool(flags),
    )


def _check_live(args: argparse.Namespace) -> int:
    facts_for = _from_cluster(args, _operator_flags(args))
    namespace = args.namespace_or_default
    facts = facts_for(namespace)

    async def read() -> tuple[JsonDict | None, JsonDict | None]:
        from trialsync_operator import kube
        from trialsync_operator.admission import injection
        from trialsync_operator.offline import live

        config, _ = live.load(args.kubeconfig, args.context)
        client = kube.Kube(config)
        try:
            cluster = live.Cluster(client)
            found: JsonDict | None = await cluster.pod(namespace, args.pod)
            event = None
            if found is not None and not injection.has_sidecar(found):
                uid = str((found.get("metadata") or {}).get("uid") or "")
                event = await cluster.missed_injection(namespace, uid) if uid else None
            return found, event
        finally:
            await client.close()

    try:
        pod, missed_event = asyncio.run(read())
    except (OSError, TimeoutError) as exc:  # kube.ApiError included: it is no OSError
        raise UsageError(f"reading the pod failed: {exc}") from None
    except Exception as exc:
        if type(exc).__name__ != "ApiError":
            raise
        raise UsageError(f"reading the pod failed: {exc}") from None
    if pod is None:
        raise UsageError(f"pod {namespace}/{args.pod} does not exist")
    report = assess(pod, namespace, facts, live=True, missed_event=missed_event)
    _print(report)
    return 0 if report.injected else 1


def _ready_condition(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    status = body.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition
    return None
