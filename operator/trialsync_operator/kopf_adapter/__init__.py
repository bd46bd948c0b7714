"""Everything the operator asks of kopf, in one place: no other module imports kopf.

kopf's private API is used here alone (``webhook_server``), behind a test that fails
loudly when kopf changes it (``tests/unit/test_kopf_adapter.py``).
"""
