"""A private PostgreSQL server for development, tests and CI.

The project never relies on the distribution's cluster service (there is no
systemd in CI containers). Instead it runs its own server from the Debian
binaries, with all state kept outside the git tree::

    ${FAUST_SEMANTICS_HOME:-~/.cache/faust-semantics}/postgres-<port>/
        data/           the cluster (initdb), owned by the ``postgres`` OS user
        run/            the unix socket directory
        postgres.log    the server log

The server listens on 127.0.0.1 only. Loopback TCP uses password auth for the
``payments`` role (database ``payments``); the unix socket, reachable only by
the ``postgres`` user and root, trusts the superuser so that this module can
create the role and database.

PostgreSQL refuses to run as root, so when this code runs as root every server
command goes through ``runuser -u postgres``; the ``postgres`` user must then be
able to traverse the directories above the data home (see
:func:`_make_traversable`).

Command line::

    python -m infra.postgres start|stop|status|dsn [--port P]

``start`` and ``status`` show the DSN with its password masked; ``dsn`` prints
the whole DSN, password included, for scripts (``PG_DSN=$(python -m infra.postgres dsn)``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from common.redact import mask_url
from infra import data_home

DEFAULT_PORT = 5433
DB_OS_USER = "postgres"
SUPERUSER = "postgres"
APP_ROLE = "payments"
APP_PASSWORD = "payments"
APP_DATABASE = "payments"
PG_ROOT = Path("/usr/lib/postgresql")
CONNECT_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 40


class PostgresError(RuntimeError):
    """The local server could not be installed, started or reached."""


@dataclass(frozen=True)
class PgInfo:
    """Where a local server lives and how to reach it."""

    dsn: str
    port: int
    data_dir: Path
    log_path: Path
    socket_dir: Path


def describe(port: int = DEFAULT_PORT, home: Path | str | None = None) -> PgInfo:
    """Return the paths and DSN of the server for ``port`` without touching it."""
    base = data_home(home) / f"postgres-{port}"
    return PgInfo(
        dsn=f"postgresql://{APP_ROLE}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DATABASE}",
        port=port,
        data_dir=base / "data",
        log_path=base / "postgres.log",
        socket_dir=base / "run",
    )


def find_bin_dir() -> Path | None:
    """Return the newest ``/usr/lib/postgresql/<major>/bin`` having initdb and pg_ctl."""
    candidates = [
        bin_dir
        for bin_dir in PG_ROOT.glob("*/bin")
        if bin_dir.parent.name.isdigit() and (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file()
    ]
    return max(candidates, key=lambda b: int(b.parent.name), default=None)


def ensure_installed() -> Path:
    """Return the server binaries directory, installing Debian's ``postgresql`` if needed."""
    bin_dir = find_bin_dir()
    if bin_dir is not None:
        return bin_dir
    hint = "install the Debian package 'postgresql' (apt-get update && apt-get install -y postgresql)"
    if os.geteuid() != 0:
        raise PostgresError(f"PostgreSQL server binaries not found under {PG_ROOT}: {hint} as root.")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PostgresError(
                f"{' '.join(command)} failed ({result.returncode}); {hint}.\n{_tail(result.stdout + result.stderr)}"
            )
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresError(f"'postgresql' was installed but no initdb/pg_ctl exists under {PG_ROOT}.")
    return bin_dir


def start(port: int = DEFAULT_PORT, home: Path | str | None = None) -> PgInfo:
    """Start (initialising on first use) the local server and return once it accepts logins.

    Idempotent: an already running server is reused. Concurrent callers are
    serialised by a file lock so that two test sessions cannot both run initdb.
    """
    bin_dir = ensure_installed()
    info = describe(port, home)
    with _exclusive(info):
        if not (info.data_dir / "PG_VERSION").is_file():
            _init_cluster(bin_dir, info)
        if not _is_running(bin_dir, info):
            _pg_ctl(bin_dir, info, "start", "-l", str(info.log_path), "-w", "-t", "60")
        _ensure_role_and_database(info)
    _wait_until_connectable(info)
    return info


def status(port: int = DEFAULT_PORT, home: Path | str | None = None) -> bool:
    """Return whether the local server for ``port`` is running."""
    bin_dir = find_bin_dir()
    info = describe(port, home)
    return bin_dir is not None and _is_running(bin_dir, info)


def stop(port: int = DEFAULT_PORT, home: Path | str | None = None) -> None:
    """Stop the local server for ``port`` (fast shutdown); a no-op when it is not running."""
    bin_dir = find_bin_dir()
    info = describe(port, home)
    if bin_dir is not None and _is_running(bin_dir, info):
        _pg_ctl(bin_dir, info, "stop", "-m", "fast", "-w")


def _as_db_user(command: Sequence[str]) -> list[str]:
    """Wrap ``command`` so it runs as the ``postgres`` OS user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", DB_OS_USER, "--", *command]
    return list(command)


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a server command as the database OS user, capturing its output."""
    return subprocess.run(_as_db_user(command), capture_output=True, text=True, check=False)


def _pg_ctl(bin_dir: Path, info: PgInfo, action: str, *options: str) -> None:
    """Run ``pg_ctl <action>`` and raise with the server log tail when it fails."""
    result = _run([str(bin_dir / "pg_ctl"), action, "-D", str(info.data_dir), *options])
    if result.returncode != 0:
        raise PostgresError(
            f"pg_ctl {action} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
            f"--- {info.log_path} ---\n{_log_tail(info)}"
        )


def _is_running(bin_dir: Path, info: PgInfo) -> bool:
    """Ask ``pg_ctl status``: exit code 0 means a live postmaster owns the data dir."""
    if not info.data_dir.is_dir():
        return False
    return _run([str(bin_dir / "pg_ctl"), "status", "-D", str(info.data_dir)]).returncode == 0


def _init_cluster(bin_dir: Path, info: PgInfo) -> None:
    """Create the cluster directory tree, run initdb and pin network settings.

    ``listen_addresses``, ``port`` and the socket directory go into
    ``postgresql.conf`` so that the data directory alone describes the server
    and ``pg_ctl start`` needs no extra options.
    """
    base = info.data_dir.parent
    base.mkdir(parents=True, exist_ok=True)
    info.socket_dir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        _make_traversable(base.parent)
        for path in (base, info.socket_dir):
            shutil.chown(path, DB_OS_USER, DB_OS_USER)
    base.chmod(0o700)
    result = _run(
        [
            str(bin_dir / "initdb"),
            "-D", str(info.data_dir),
            f"--username={SUPERUSER}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]
    )  # fmt: skip
    if result.returncode != 0:
        raise PostgresError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    with (info.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            "\n# Added by infra/postgres.py\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {info.port}\n"
            f"unix_socket_directories = '{info.socket_dir}'\n"
        )


def _make_traversable(directory: Path) -> None:
    """Grant search (``o+x``, not read) on ``directory`` and its ancestors where missing.

    Needed when root's home (mode 0700) holds the data home: the server runs
    as ``postgres`` and must traverse the path to reach its own directory.
    """
    for path in (*reversed(directory.parents), directory):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _ensure_role_and_database(info: PgInfo) -> None:
    """Create the application role and database unless they exist (superuser over the socket)."""
    with psycopg.connect(
        host=str(info.socket_dir), port=info.port, user=SUPERUSER, dbname="postgres", autocommit=True
    ) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone() is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(APP_PASSWORD)
                )
            )
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,)).fetchone() is None:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(APP_DATABASE), sql.Identifier(APP_ROLE))
            )


def _wait_until_connectable(info: PgInfo) -> None:
    """Return once the application DSN logs in over TCP; raise with the log tail otherwise."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(info.dsn, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"cannot connect to {mask_url(info.dsn)}: {mask_url(str(exc), info.dsn)}\n"
                    f"--- {info.log_path} ---\n{_log_tail(info)}"
                ) from exc
            time.sleep(0.2)


@contextlib.contextmanager
def _exclusive(info: PgInfo) -> Iterator[None]:
    """Hold an exclusive file lock for this port's server while (re)configuring it."""
    lock_path = info.data_dir.parent.with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _log_tail(info: PgInfo) -> str:
    """Return the last lines of the server log, or why there are none."""
    try:
        return _tail(info.log_path.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        return f"(no log: {exc})"


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m infra.postgres``."""
    parser = argparse.ArgumentParser(prog="python -m infra.postgres", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "dsn"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(f"running {mask_url(start(args.port).dsn)} (the DSN itself: python -m infra.postgres dsn)")
        elif args.command == "stop":
            stop(args.port)
        elif args.command == "status":
            running = status(args.port)
            info = describe(args.port)
            print(f"running {mask_url(info.dsn)}" if running else f"stopped (data dir {info.data_dir})")
            return 0 if running else 3
        else:
            print(describe(args.port).dsn)
    except PostgresError as exc:
        parser.exit(1, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
