"""Fixtures shared by every test: real servers on loopback, started once per session."""

pytest_plugins = [
    "tests.support.object_stores",
    "tests.support.control_plane",
]
