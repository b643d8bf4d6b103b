"""``python -m benchmarks [--quick] [--only append,latency,...] [--out DIR]``; ``--help`` lists the measurements."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]

logger = logging.getLogger("benchmarks")

MEASUREMENTS = ("append", "latency", "append_breakdown", "catchup", "rebuild", "async_append", "sse", "runner_scale")
QUICK_SKIPS = ("runner_scale",)
"""Left out of ``--quick`` unless named in ``--only``: two runner processes with an idle window each, 30-50 s."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke run (about a minute)")
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {','.join(MEASUREMENTS)} (default: all; --quick leaves out "
        f"{','.join(QUICK_SKIPS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="output directory (default: benchmarks/results/, git-ignored)",
    )
    parser.add_argument(
        "--rebuild-events",
        type=int,
        default=None,
        help="events for the rebuild measurement (default: the mode's, 1,000,000 in full mode)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every sample")
    arguments = parser.parse_args(argv)
    if arguments.only is None:
        arguments.skipped = [name for name in QUICK_SKIPS if arguments.quick]
        arguments.only = ",".join(name for name in MEASUREMENTS if name not in arguments.skipped)
    else:
        arguments.skipped = []
    chosen = [name.strip() for name in arguments.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(MEASUREMENTS))
    if unknown or not chosen:
        parser.error(f"--only got {','.join(unknown) or 'nothing'}; choose from {','.join(MEASUREMENTS)}")
    arguments.only = chosen
    return arguments


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min)"


def main(argv: list[str] | None = None) -> None:
    arguments = _parse(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logger.setLevel(logging.INFO if arguments.verbose else logging.WARNING)
    from benchmarks.plan import FULL, QUICK

    plan = QUICK if arguments.quick else FULL
    if arguments.rebuild_events:
        plan = dataclasses.replace(plan, rebuild_events=arguments.rebuild_events)
    began = time.monotonic()

    from benchmarks.report import Results, machine_description
    from benchmarks.server import bench_server

    with bench_server() as server:
        results = Results(mode=plan.mode, machine=machine_description(server.settings()))
        results.notes.append(f"load average at the start {_load()} (other work on the machine shows here)")
        if arguments.skipped:
            results.notes.append(
                f"--quick left out {', '.join(arguments.skipped)} (30-50 s more); name it in --only to run it "
                "(e.g. python -m benchmarks.runner_scale --quick)"
            )
        pool = None
        try:
            if "append" in arguments.only or "latency" in arguments.only:
                from benchmarks.append import CONTENDERS, measure_append, prepare_targets, server_cpu
                from benchmarks.writers import WriterPool

                logger.info("starting %d writer processes", max(plan.writer_counts))
                pool = WriterPool(prepare_targets(server), max(plan.writer_counts))
                for contender in CONTENDERS:  # connect and warm up outside any measurement
                    pool.start(max(plan.writer_counts), contender, 1, 0.0, delay=0.0)
                    pool.collect()
            if "append" in arguments.only:
                assert pool is not None
                logger.info("append: %s", plan)
                measure_append(
                    pool,
                    results,
                    writer_counts=plan.writer_counts,
                    batch_sizes=plan.batch_sizes,
                    repeats=plan.repeats,
                    duration=plan.append_seconds,
                    server=server_cpu(server),
                )
            if "latency" in arguments.only:
                assert pool is not None
                from benchmarks.latency import measure_latency

                logger.info("latency")
                measure_latency(server, pool, results, plan)
            if "append_breakdown" in arguments.only:
                if pool is not None:  # its writers' connections, before the breakdown's pool opens its own
                    pool.close()
                    pool = None
                from benchmarks.append_breakdown import measure_append_breakdown

                logger.info("append breakdown")
                measure_append_breakdown(server, results, plan)
            if "catchup" in arguments.only:
                from benchmarks.catchup import measure_catchup

                logger.info("catch-up")
                measure_catchup(server, results, plan)
            if "rebuild" in arguments.only:
                from benchmarks.rebuild import measure_rebuild

                logger.info("rebuild")
                measure_rebuild(server, results, plan)
            if "async_append" in arguments.only:
                from benchmarks.async_append import measure_async_append

                logger.info("async append")
                measure_async_append(
                    server,
                    results,
                    writer_counts=plan.async_writer_counts,
                    repeats=plan.async_repeats,
                    duration=plan.async_append_seconds,
                    without_wake_up=plan.async_without_wake_up,
                )
            if "sse" in arguments.only:
                from benchmarks.sse import measure_sse

                logger.info("sse latency")
                measure_sse(server, results, plan)
            if "runner_scale" in arguments.only:
                from benchmarks.runner_scale import measure_runner_scale

                logger.info("runner scale")
                measure_runner_scale(server, results, plan)
        finally:
            if pool is not None:
                pool.close()
    results.notes.append(f"total run time {time.monotonic() - began:.0f} s; load average at the end {_load()}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    md_path, json_path = results.write(arguments.out, stamp=stamp)
    print(results.markdown())
    print(f"\nwrote {md_path} and {json_path}", file=sys.stderr)
