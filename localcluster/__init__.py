"""A local Kubernetes cluster with a real node, for tests and for a developer's shell.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd, the kubelet,
kube-proxy and CoreDNS run in private pid, mount and network namespaces (see
:mod:`.launcher`), from binaries built by ``tools/build.sh --node`` and with images built by
``images/build.py``. The host's iptables, sysctls and paths stay as they were, and nothing
outlives the process that started the cluster unless it was started detached (``make
cluster-up``).

Modules, from the host inwards:

- :mod:`.fixtures`: pytest fixtures (``cluster``, ``cluster_namespace``, ``cluster_s3``);
- :mod:`.harness`: the handle tests use, the same for the local cluster and for kind;
- :mod:`.control`: start, attach, stop; dead instances' leftovers; host access;
- :mod:`.prepare`, :mod:`.pki`, :mod:`.configs`, :mod:`.components`: what the launcher runs;
- :mod:`.launcher`: pid 1 inside the namespaces;
- :mod:`.forwarding`, :mod:`.linux`, :mod:`.cgroups`, :mod:`.layout`: the plumbing.

``python -m localcluster up|down|status`` is ``make cluster-up`` / ``cluster-down``.
"""
