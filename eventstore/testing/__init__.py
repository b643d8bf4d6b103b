"""Test support: a real PostgreSQL per test session and a fresh database per test.

Use it in your own project's tests with ``pytest_plugins = ["eventstore.testing.plugin"]``.
"""

from eventstore.testing.server import TestServer, provision_server

__all__ = ["TestServer", "provision_server"]
