"""``python -m examples.orders_app``: serve the order app on http://127.0.0.1:8000 (database: EVENTSTORE_URL)."""

from __future__ import annotations

import argparse

import uvicorn

from eventstore import ConfigurationError
from examples.orders_app.app import from_environment


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.orders_app", description="Serve the order app (the database: EVENTSTORE_URL)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    arguments = parser.parse_args()
    try:
        app = from_environment()
    except ConfigurationError as error:
        parser.exit(2, f"error: {error}\n")
    uvicorn.run(app, host=arguments.host, port=arguments.port)


if __name__ == "__main__":
    main()
