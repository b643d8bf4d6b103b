"""Example applications built on eventstore (not part of the wheel)."""
