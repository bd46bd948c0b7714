"""trialsync's Kubernetes operator: the SyncConfig resource and sidecar injection.

Run it with the ``trialsync-operator`` command. Importing this package loads only the
seed model of ``trialsync`` (``trialsync.config``), never the sync engine or a storage
client: the operator validates SyncConfigs and writes pod specs, it moves no data.
"""

__version__ = "0.1.0"
