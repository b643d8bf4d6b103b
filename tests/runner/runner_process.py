"""Run a ProjectionRunner with one ledger projection in its own process (failover and signal tests).

Usage: python runner_process.py URL [--name ledger] [--delay SECONDS] [--batch-size N] [--listen-url URL]
Exits 0 after a clean shutdown (SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import logging
import sys

from eventstore import EventStore, ProjectionRunner
from projections import Ledger


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--name", default="ledger")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--listen-url", default=None)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    runner = ProjectionRunner(
        EventStore(arguments.url),
        [Ledger(arguments.name, delay=arguments.delay)],
        poll_interval=2.0,
        batch_size=arguments.batch_size,
        lock_retry_interval=0.2,
        held_back_interval=0.05,
        listen_url=arguments.listen_url,
    )
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
