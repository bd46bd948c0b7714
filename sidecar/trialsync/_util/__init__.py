"""Small helpers with no knowledge of syncing: exact local reads, private files, bounded
fan-out, backoff, an HTTP site."""
