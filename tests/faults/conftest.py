"""Fixtures of the fault-injection suite (defined in faultlib.py, shared with the test modules)."""

from faultlib import fault, repo, server, tiny_msvd  # noqa: F401 - pytest fixtures
