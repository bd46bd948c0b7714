"""Reconciliation: SyncConfig status, Events, the head-node Secret and Service, leadership."""
