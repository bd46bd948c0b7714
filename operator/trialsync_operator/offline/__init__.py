"""The webhook's decisions outside the webhook: ``trialsync inject`` (what it would make of
a pod or of a workload's pod templates) and ``trialsync check-inject`` (whether and why a
pod is, or would be, injected).

Both run the webhook's own code, ``admission.injection.plan`` and ``admission.patch``, on
what the cluster would send it, so what they print is what the webhook does; they never
import kopf. The ``trialsync`` command (the sidecar's) loads this package only when one of
these subcommands runs, so the sidecar itself never imports the operator.
"""
