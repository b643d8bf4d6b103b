"""Shared fixtures: see eventstore/testing/plugin.py for the database ones."""

pytest_plugins = ["eventstore.testing.plugin"]
