"""The webhook's certificates: issued and rotated (``certificates``), served (``serving``)."""
