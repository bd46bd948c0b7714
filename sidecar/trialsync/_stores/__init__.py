"""The remote side: the ``Store`` protocol (``base``) and its implementations over fsspec,
the lean S3 client, GCS resumable uploads and custom Ray syncers."""
