"""The newcomer's path through the installed ``eventstore`` command, run as a real process.

Each test runs the console script next to ``sys.executable`` (``--url`` points
at this test's database unless the embedded server is the subject) and checks
the exit code and the one line a user reads. Commands that do not depend on
each other run in parallel (:func:`run_many`): each process spends most of
its time importing, and the file must stay fast on two cores.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
import typer

from eventstore import EventStore, InvalidEvent, NewEvent, admin
from eventstore.cli import app
from eventstore.embedded import LocalPostgres
from eventstore.runner import ProjectionRunner

EVENTSTORE = Path(sys.executable).parent / "eventstore"

pytestmark = pytest.mark.skipif(not EVENTSTORE.exists(), reason="the console script is not installed")

PROJECTIONS = '''\
"""Projections a newcomer writes: one chokes on a negative deposit (a poison event)."""

from eventstore.projection import Projection, handles


class Ledger(Projection):
    name = "ledger"
    categories = ("account",)

    def forget_stream(self, stream_id, conn):
        pass

    @handles("Deposited")
    def deposited(self, event, conn):
        if event.data["amount"] < 0:
            raise ValueError(f"negative amount {event.data['amount']}")


class Audit(Projection):
    name = "audit"

    def forget_stream(self, stream_id, conn):
        pass

    @handles("Deposited")
    def deposited(self, event, conn):
        pass
'''


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    """This process's environment without EVENTSTORE_* and PYTHONPATH (a newcomer's shell has neither)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTSTORE_")}
    env.pop("PYTHONPATH", None)
    return {**env, **(extra or {})}


def _command(args: Sequence[str], url: str | None) -> list[str]:
    return [str(EVENTSTORE), *(["--url", url] if url else []), *args]


def run(
    *args: str, url: str | None = None, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``eventstore [--url URL] ARGS`` and wait for it."""
    return subprocess.run(
        _command(args, url), capture_output=True, text=True, timeout=60, cwd=cwd, env=_environment(env)
    )


def run_many(
    *commands: Sequence[str],
    url: str | None = None,
    cwd: Path | Sequence[Path] | None = None,
    env: dict[str, str] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands at the same time (``cwd``: one for all, or one each); results in order."""
    directories = list(cwd) if isinstance(cwd, Sequence) else [cwd] * len(commands)
    processes = [
        subprocess.Popen(
            _command(args, url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=directory,
            env=_environment(env),
        )
        for args, directory in zip(commands, directories, strict=True)
    ]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=60)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``Error: ...`` line a failed command printed (log lines may precede it, a traceback may not)."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """typer's own usage error (exit 2): its ``Error`` text, boxes and line breaks removed."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return " ".join(result.stderr.replace("│", " ").split())


@pytest.fixture
def projections_dir(tmp_path: Path) -> Path:
    """A directory holding ``newcomer_projections.py``: run eventstore from here."""
    (tmp_path / "newcomer_projections.py").write_text(PROJECTIONS)
    return tmp_path


def _projections(directory: Path) -> ModuleType:
    """The same module, imported in this process (not registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location("newcomer_projections", directory / "newcomer_projections.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_in_process(store: EventStore, projection: Any) -> list[str]:
    # The CLI runs with the defaults (3 attempts, backoff from 0.1 s); set-up runs in this process go faster.
    with ProjectionRunner(store, [projection], poll_interval=0.2, retry_attempts=1, retry_delay=0.01) as runner:
        runner.run_until_caught_up(timeout=30)
        return list(runner.failed)


def _deposit(store: EventStore, stream_id: str, *amounts: int) -> list[int]:
    """Append one Deposited event per amount; their global positions."""
    return [store.append(stream_id, [NewEvent("Deposited", {"amount": amount})]).global_position for amount in amounts]


# -- 1. a projection stopped on a poison event: exit code 3 and what to do -------------------------------------


def test_run_and_rebuild_exit_3_naming_projection_position_error_and_commands(
    database_url: str, store: EventStore, projections_dir: Path
) -> None:
    _, poison, _ = _deposit(store, "account-1", 5, -5, 7)
    expected = (
        f"Error: projection 'ledger' stopped on the Deposited event of account-1 at position {poison}: "
        "ValueError: negative amount -5; see it with `eventstore projections failures ledger --open --traceback`, "
        "then fix the projection and run `eventstore projections retry ledger` "
        "(or `eventstore projections skip ledger`)"
    )
    options = ("--projections", "newcomer_projections")

    ran = run(*options, "projections", "run", "ledger", "--until-caught-up", url=database_url, cwd=projections_dir)
    assert ran.returncode == 3, ran.stderr
    assert error_line(ran) == expected
    assert "caught up" not in ran.stderr

    rebuilt = run(*options, "projections", "rebuild", "ledger", url=database_url, cwd=projections_dir)
    assert rebuilt.returncode == 3, rebuilt.stderr
    assert error_line(rebuilt) == expected
    assert "rebuilt ledger" not in rebuilt.stdout


# -- 2. --projections finds a package in the current directory, without PYTHONPATH ----------------------------


def test_projections_module_is_importable_from_the_current_directory(database_url: str, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "bank").mkdir(parents=True)
    (project / "bank" / "__init__.py").write_text("")
    (project / "bank" / "projections.py").write_text(PROJECTIONS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = ("--projections", "bank.projections", "projections", "list", "--json")

    listed, missing = run_many(command, command, url=database_url, cwd=[project, elsewhere])
    assert listed.returncode == 0, listed.stderr
    assert {item["name"]: item["class"] for item in json.loads(listed.stdout)} == {
        "ledger": "bank.projections.Ledger",
        "audit": "bank.projections.Audit",
    }
    assert missing.returncode == 1
    assert error_line(missing) == (
        f"Error: cannot import projections module 'bank.projections': no module named 'bank' in the current "
        f"directory ({elsewhere}) or the installed packages; run eventstore from the directory that holds bank.py "
        "or bank/ (or set PYTHONPATH), or fix --projections MODULE (env EVENTSTORE_PROJECTIONS)"
    )


# -- 3. `server url` works with --url, psql and EventStore(url) -------------------------------------------------


def _psql() -> str | None:
    candidates = [shutil.which("psql"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True)]
    return next((candidate for candidate in candidates if candidate), None)


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A directory for a PostgreSQL data directory, outside pytest's basetemp.

    As root the server runs as the ``eventstore`` user, which needs to reach
    its data directory; a pytest session that starts meanwhile (another
    engineer's, on a shared machine) resets ``/tmp/pytest-of-root`` to 0700.
    """
    path = Path(tempfile.mkdtemp(prefix="eventstore-newcomer-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded_home(server_dir: Path) -> Iterator[dict[str, str]]:
    """EVENTSTORE_HOME for a private embedded server; stopped with `eventstore server stop` at the end."""
    env = {"EVENTSTORE_HOME": str(server_dir / "home")}
    yield env
    server = LocalPostgres(server_dir / "home" / "pgdata")
    was_running = server.is_running()
    stopped = run("server", "stop", env=env)
    if server.is_running():  # the command failed: do not leave a server behind
        server.kill()
    assert stopped.returncode == 0, stopped.stderr
    assert ("stopped the embedded PostgreSQL" if was_running else "not running") in stopped.stdout


def test_server_url_works_with_url_psql_and_eventstore(embedded_home: dict[str, str]) -> None:
    printed = run("server", "url", env=embedded_home)
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.strip()
    assert url.startswith("postgresql://postgres@127.0.0.1:") and url.endswith("/eventstore"), url
    assert printed.stderr.startswith(
        f"using embedded PostgreSQL 18 at {url} (data in {embedded_home['EVENTSTORE_HOME']}"
    )

    with EventStore(url) as store:
        position = store.append("order-1", [NewEvent("OrderPlaced", {"total": 3})]).global_position

    psql = _psql()
    commands: list[Sequence[str]] = [("log", "--json"), ("server", "url")]
    logged, refused = run_many(*commands, url=url, env=embedded_home)
    assert logged.returncode == 0, logged.stderr
    assert [(event["global_position"], event["stream_id"]) for event in json.loads(logged.stdout)] == [
        (position, "order-1")
    ]
    assert refused.returncode == 1
    assert error_line(refused) == (
        "Error: `server url` prints the embedded server's URL, but --url (or EVENTSTORE_URL) names another "
        "database; run it without --url and with EVENTSTORE_URL unset"
    )
    if psql is None:
        pytest.skip("psql is not installed (apt-get install postgresql-client); --url and EventStore(url) passed")
    queried = subprocess.run(
        [psql, url, "-tAc", "SELECT stream_id FROM events"], capture_output=True, text=True, timeout=30
    )
    assert queried.returncode == 0, queried.stderr
    assert queried.stdout.strip() == "order-1"


# -- 4. a refused connection says why: password, role, database ---------------------------------------------


def test_unknown_role_and_unknown_database_each_have_their_own_message(database_url: str) -> None:
    url = sa.make_url(database_url)
    where = f"{url.host}:{url.port}"
    no_role = url.set(username="no_such_role").render_as_string(hide_password=False)
    no_database = url.set(database="no_such_database").render_as_string(hide_password=False)
    role, database = run_many(("--url", no_role, "log"), ("--url", no_database, "log"))
    assert role.returncode == 1 and database.returncode == 1
    assert error_line(role) == (
        f"Error: PostgreSQL at {where}/{url.database} has no role 'no_such_role'; put an existing user in the URL "
        "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE) or create the role"
    )
    assert error_line(database) == (
        f"Error: database 'no_such_database' does not exist on the PostgreSQL at {where}; create it "
        "(createdb no_such_database, or CREATE DATABASE) or fix the database name in the URL"
    )


@pytest.fixture
def password_server(server_dir: Path) -> Iterator[LocalPostgres]:
    """A private server where role ``alice`` (password ``right``) must give her password (scram-sha-256)."""
    server = LocalPostgres(server_dir / "pg").ensure_running()
    try:
        admin_engine = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin_engine.connect() as connection:
            connection.execute(sa.text("CREATE ROLE alice LOGIN PASSWORD 'right'"))
            # Trust for the superuser only, so the test can still administer (and stop) the server.
            (server.data_dir / "pg_hba.conf").write_text(
                "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
            )
            assert connection.execute(sa.text("SELECT pg_reload_conf()")).scalar_one()
        admin_engine.dispose()
        yield server
    finally:
        server.destroy()


def test_wrong_or_missing_password_is_not_reported_as_an_unreachable_server(password_server: LocalPostgres) -> None:
    where = f"127.0.0.1:{password_server.port}/postgres"
    wrong = f"postgresql://alice:not-her-secret@127.0.0.1:{password_server.port}/postgres"
    missing = f"postgresql://alice@127.0.0.1:{password_server.port}/postgres"
    right = f"postgresql://alice:right@127.0.0.1:{password_server.port}/postgres"
    refused, no_password, accepted = run_many(
        ("--url", wrong, "log"), ("--url", missing, "log"), ("--url", right, "log")
    )
    assert refused.returncode == 1
    assert error_line(refused) == (
        f"Error: PostgreSQL at {where} refused the password of user 'alice'; check the user and password in the URL"
    )
    assert "not-her-secret" not in refused.stderr + refused.stdout
    assert no_password.returncode == 1
    assert error_line(no_password) == (
        f"Error: PostgreSQL at {where} wants a password for user 'alice' and the URL has none; "
        "put it in the URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE) or in ~/.pgpass"
    )
    # The right password gets through authentication: what fails now is the missing schema.
    assert accepted.returncode == 1
    assert "run `eventstore migrate`" in error_line(accepted)
    for result in (refused, no_password, accepted):
        assert "cannot reach PostgreSQL" not in result.stderr and "is the server running" not in result.stderr


# -- 5. option values out of range are named as options ------------------------------------------------------


def test_out_of_range_option_values_name_the_option(database_url: str, store: EventStore) -> None:
    first = store.append("order-1", [NewEvent("OrderPlaced", {})]).global_position
    huge = "99999999999999999999"
    # Below the minimum typer has always caught; above the maximum the library did, in its own words.
    expected_version, null_data, *range_errors, unknown_after, unknown_from = run_many(
        ("append", "order-1", "OrderPaid", "--expected-version", huge),
        ("append", "order-1", "OrderPaid", "--data", "null"),
        ("read", "order-1", "--from-version", "99999999999"),
        ("read", "order-1", "--limit", huge),
        ("log", "--after", huge),
        ("log", "--after", str(first + 1000)),
        ("projections", "rebuild", "order_summaries", "--from-position", str(first + 1000)),
        url=database_url,
    )
    assert expected_version.returncode == 2
    assert error_line(expected_version) == (
        f"Error: --expected-version: '{huge}' is not a stream version; use an integer from 0 to 2147483647 "
        "(the version of the stream's last event, 0 for a new stream), any, no-stream or exists"
    )
    assert null_data.returncode == 1
    assert error_line(null_data) == (
        "Error: --data: expected a JSON object, got null in the value; "
        """wrap it in an object such as '{"value": ...}'"""
    )
    for result, option in zip(range_errors, ["--from-version", "--limit", "--after"], strict=True):
        message = usage_error(result)
        assert f"Invalid value for '{option}'" in message, message
        assert "must be between" not in message and "from_version" not in message
    assert unknown_after.returncode == 1
    assert error_line(unknown_after) == (
        f"Error: --after {first + 1000}: no event is stored at position {first + 1000}; "
        "pass a position that `eventstore log` prints, or 0 for the first event"
    )
    assert unknown_from.returncode == 1
    assert error_line(unknown_from) == (
        f"Error: --from-position {first + 1000}: no event is stored at position {first + 1000}; "
        "pass a position that `eventstore log` prints, or leave it out to rebuild from the start"
    )


# -- 6. stream ids: no surrounding whitespace, no control characters; any other Unicode -----------------------

BAD_STREAM_IDS = {
    " order-1": "' order-1' has leading or trailing whitespace; remove it",
    "order-1 ": "'order-1 ' has leading or trailing whitespace; remove it",
    "order\t1": "'order\\t1' contains the control character '\\t' at index 5; use printable characters only",
    "order\n1": "'order\\n1' contains the control character '\\n' at index 5; use printable characters only",
}


@pytest.mark.parametrize("stream_id", list(BAD_STREAM_IDS))
def test_api_rejects_stream_ids_that_do_not_print_unambiguously(store: EventStore, stream_id: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        store.append(stream_id, [NewEvent("OrderPlaced", {})])
    assert raised.value.field == "stream_id"
    assert str(raised.value) == f"stream_id: {BAD_STREAM_IDS[stream_id]}"
    assert store.head_position() == 0


def test_cli_rejects_bad_stream_ids_and_keeps_unicode_ones(database_url: str, store: EventStore) -> None:
    written, appended = "kunde-ö-🚀", "bestellung-ä-🚀"
    store.append(written, [NewEvent("CustomerRegistered", {"name": "Jürgen 🚀"})])
    bad = [" order-1", "order\t1", "order\n1"]  # the API test covers the trailing space too
    *rejected, accepted, read = run_many(
        *[("append", stream_id, "OrderPlaced") for stream_id in bad],
        ("append", appended, "OrderPlaced", "--data", '{"artikel": "Größe 🚀"}'),
        ("read", written, "--json"),
        url=database_url,
    )
    for result, stream_id in zip(rejected, bad, strict=True):
        assert result.returncode == 1
        assert error_line(result) == f"Error: STREAM: {BAD_STREAM_IDS[stream_id]}"
        assert result.stdout == ""
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == f"appended OrderPlaced to {appended}@1 at position 2"
    [stored] = store.read_stream(appended)
    assert stored.data == {"artikel": "Größe 🚀"}
    assert read.returncode == 0, read.stderr
    [event] = json.loads(read.stdout)
    assert (event["stream_id"], event["data"]) == (written, {"name": "Jürgen 🚀"})
    assert store.head_position() == 2  # nothing of the rejected appends was written


# -- 7. replaying a stream the projection has not reached ----------------------------------------------------


def test_replay_through_a_projection_that_has_not_reached_the_stream(
    database_url: str, store: EventStore, projections_dir: Path
) -> None:
    module = _projections(projections_dir)
    [reached] = _deposit(store, "account-1", 5)
    assert _run_in_process(store, module.Ledger()) == []
    [later] = _deposit(store, "account-2", 7)
    store.append("customer-1", [NewEvent("CustomerRegistered", {})])
    options = ("--projections", "newcomer_projections", "streams", "replay")

    not_reached, never_ran, filtered_out, replayed = run_many(
        (*options, "account-2", "--projection", "ledger"),
        (*options, "account-2", "--projection", "audit"),
        (*options, "customer-1", "--projection", "ledger"),
        (*options, "account-1", "--projection", "ledger"),
        url=database_url,
        cwd=projections_dir,
    )
    assert not_reached.returncode == 1
    assert error_line(not_reached) == (
        f"Error: projection 'ledger' is at position {reached} and has not reached account-2's events yet "
        f"(the first it handles is at position {later}), so there is nothing to replay; run "
        "`eventstore projections run ledger --until-caught-up` first, then replay again if the read model still "
        "looks wrong"
    )
    assert never_ran.returncode == 1
    assert error_line(never_ran) == (
        "Error: projection 'audit' has never run, so its read model holds nothing of account-2 to replay; "
        "run `eventstore projections run audit --until-caught-up` first (it applies the stream's events itself)"
    )
    assert filtered_out.returncode == 1
    assert error_line(filtered_out) == (
        "Error: projection 'ledger' handles none of the 1 event(s) of customer-1 (categories: account; "
        "event types: all), so there is nothing to replay; pick the projection that builds this stream's "
        "read model (see `eventstore projections list`)"
    )
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "replayed 1 event(s) of account-1 through ledger"


# -- 8. failures --open and --traceback --------------------------------------------------------------------


def test_failures_open_shows_only_unresolved_ones_and_traceback_shows_the_stack(
    database_url: str, store: EventStore, projections_dir: Path
) -> None:
    module = _projections(projections_dir)
    [skipped] = _deposit(store, "account-1", -1)
    assert _run_in_process(store, module.Ledger()) == ["ledger"]
    assert admin.skip(store, "ledger") == skipped
    [still_open] = _deposit(store, "account-2", -2)
    assert _run_in_process(store, module.Ledger()) == ["ledger"]
    options = ("--projections", "newcomer_projections", "projections", "failures")

    everything, open_only, open_json = run_many(
        (*options, "--json"),
        (*options, "ledger", "--open", "--traceback"),
        (*options, "--open", "--traceback", "--json"),
        url=database_url,
        cwd=projections_dir,
    )
    for result in (everything, open_only, open_json):
        assert result.returncode == 0, result.stderr
    assert [(item["global_position"], item["status"]) for item in json.loads(everything.stdout)] == [
        (skipped, "skipped"),
        (still_open, "failed"),
    ]
    assert "traceback" not in json.loads(everything.stdout)[0]

    [failure] = json.loads(open_json.stdout)
    assert (failure["global_position"], failure["stream_id"], failure["status"]) == (still_open, "account-2", "failed")
    assert failure["error"] == "ValueError: negative amount -2"
    assert failure["traceback"].startswith("Traceback (most recent call last):")
    assert 'newcomer_projections.py", line' in failure["traceback"]
    assert failure["traceback"].rstrip().endswith("ValueError: negative amount -2")

    table, _, stack = open_only.stdout.partition(f"\nledger at position {still_open}:\n")
    assert [line.split()[:5] for line in table.splitlines()[1:]] == [
        ["ledger", str(still_open), "account-2", "Deposited", "failed"]
    ]
    assert stack.rstrip() == failure["traceback"].rstrip()


# -- 9. every option has one line of help; tail --after P ---------------------------------------------------


def _parameters(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    for parameter in command.params:
        yield " ".join(path), parameter
    for name, child in getattr(command, "commands", {}).items():
        yield from _parameters(child, (*path, name))


def _commands(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    for name, child in getattr(command, "commands", {}).items():
        yield " ".join((*path, name)), child
        yield from _commands(child, (*path, name))


def test_every_command_option_and_argument_has_one_line_of_help() -> None:
    root = typer.main.get_command(app)
    parameters = list(_parameters(root, ("eventstore",)))
    assert len(parameters) > 40  # the walk reached the subcommands
    for where, parameter in parameters:
        help_text = getattr(parameter, "help", None) or ""
        assert help_text.strip(), f"{where} {parameter.name}: no help"
        assert "\n" not in help_text.strip(), f"{where} {parameter.name}: help is more than one line"
        if parameter.param_type_name == "option":
            assert str(parameter.envvar or "").startswith("EVENTSTORE_"), f"{where} {parameter.opts}: no envvar"
    for where, command in _commands(root, ("eventstore",)):
        assert (command.help or "").strip(), f"{where}: no help"


def test_tail_after_a_position_prints_what_follows_it(database_url: str, store: EventStore) -> None:
    positions = [store.append(f"order-{n}", [NewEvent("OrderPlaced", {"n": n})]).global_position for n in (1, 2, 3)]
    unknown = positions[-1] + 100
    first_two, after_first, missing = run_many(
        ("tail", "--after", "0", "--count", "2", "--json"),
        ("tail", "--after", str(positions[0]), "--count", "1"),
        ("tail", "--after", str(unknown)),
        url=database_url,
    )
    assert first_two.returncode == 0, first_two.stderr
    assert [json.loads(line)["global_position"] for line in first_two.stdout.splitlines()] == positions[:2]
    assert "tailing after position 0" in first_two.stderr
    assert after_first.returncode == 0, after_first.stderr
    assert "order-2@1" in after_first.stdout and len(after_first.stdout.splitlines()) == 1
    assert missing.returncode == 1
    assert error_line(missing) == (
        f"Error: --after {unknown}: no event is stored at position {unknown}; pass a position that `eventstore log` "
        "prints, 0 for the first event, or leave it out to start at the head"
    )
