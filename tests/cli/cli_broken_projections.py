"""A projections module that fails to import (for the CLI's error message)."""

from eventstore_no_such_module import Anything  # type: ignore[import-not-found]  # noqa: F401
