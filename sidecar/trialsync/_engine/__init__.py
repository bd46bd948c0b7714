"""The sync engine: what to upload and when, at a cost of O(changes).

It sees the trial volume through the change journal and the remote side through the
``Store`` protocol of ``trialsync._stores.base`` only: never fsspec or a storage client.
"""
