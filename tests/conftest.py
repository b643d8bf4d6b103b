"""Shared fixtures: eventstore's pytest plugin (registered by the ``pytest11`` entry point) gives the database ones."""
