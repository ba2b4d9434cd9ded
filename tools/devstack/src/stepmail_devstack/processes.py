"""Child-process helpers shared by the embedded components and the service launcher."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 400


class DevstackError(RuntimeError):
    """A devstack component could not be started or stopped."""


class ProcessDiedError(DevstackError):
    """A child process exited while we were waiting for it to become ready."""


class ReadinessTimeoutError(DevstackError):
    """A child process did not become ready before its deadline."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl: Callable[[int, int], int] = libc.prctl
    return prctl


# Loaded in the parent: the child of a fork must not import or dlopen anything.
_PRCTL = _load_prctl()


def die_with_parent_preexec() -> Callable[[], None]:
    """Build a ``preexec_fn`` making the child get SIGKILL when its parent dies.

    Linux delivers the signal when the *thread* that forked exits, so start
    children from a long-lived thread (the main thread). The ``preexec_fn`` runs
    after ``subprocess`` switched ``user``/``group``, so the setting survives the
    credential change that would otherwise clear it.
    """
    parent = os.getpid()

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died between fork and prctl.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class ManagedProcess:
    """A named child process whose output is kept, logged and optionally echoed.

    The child runs in its own process group so a terminal's Ctrl-C reaches only
    the parent, which then stops children in the order it chooses.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        echo: bool = False,
        user: int | None = None,
        group: int | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log_path = log_path
        self.echo = echo
        self.user = user
        self.group = group
        self.stop_signal = stop_signal
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self._tail_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the child; starting a running process is an error.

        Call from a long-lived thread: the child is killed when the starting
        thread ends (see :func:`die_with_parent_preexec`).
        """
        if self.running:
            raise DevstackError(f"{self.name} is already running (pid {self.pid})")
        self._join_reader()
        log_file: IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - argv list from our own callers
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                user=self.user,
                group=self.group,
                process_group=0,
                preexec_fn=die_with_parent_preexec(),
            )
        except BaseException:
            if log_file is not None:
                log_file.close()
            raise
        self._reader = threading.Thread(
            target=self._pump,
            args=(self._proc, log_file),
            name=f"output-{self.name}",
            daemon=True,
        )
        self._reader.start()

    def _pump(self, proc: subprocess.Popen[bytes], log_file: IO[bytes] | None) -> None:
        assert proc.stdout is not None
        prefix = f"{self.name:<12}| "
        try:
            for raw in proc.stdout:
                if log_file is not None:
                    log_file.write(raw)
                    log_file.flush()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._tail_lock:
                    self._tail.append(line)
                if self.echo:
                    sys.stdout.write(prefix + line + "\n")
                    sys.stdout.flush()
        finally:
            proc.stdout.close()
            if log_file is not None:
                log_file.close()

    def _join_reader(self, timeout: float = 5.0) -> None:
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the child wrote to stdout/stderr."""
        with self._tail_lock:
            return "\n".join(list(self._tail)[-lines:])

    def send_signal(self, sig: int) -> None:
        """Signal the child if it still runs."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Send the configured stop signal, then SIGKILL after ``timeout`` seconds.

        Safe to call twice and on a process that never started.
        """
        return self._stop_with(self.stop_signal, timeout)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        return self._stop_with(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL right away and reap the child."""
        return self._stop_with(signal.SIGKILL, 5.0)

    def _stop_with(self, sig: int, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                proc.wait()
        self._join_reader()
        return proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit on its own."""
        if self._proc is None:
            raise DevstackError(f"{self.name} was never started")
        return self._proc.wait(timeout)

    def ensure_alive(self) -> None:
        """Raise :class:`ProcessDiedError` with the log tail if the child exited."""
        if self._proc is None:
            raise DevstackError(f"{self.name} was never started")
        code = self._proc.poll()
        if code is not None:
            self._join_reader(1.0)
            raise ProcessDiedError(
                f"{self.name} exited with code {code}; last output:\n{self.log_tail()}"
            )

    def wait_until(
        self,
        check: Callable[[], bool],
        timeout: float,
        what: str,
        interval: float = 0.1,
    ) -> None:
        """Poll ``check`` until it returns true, the child dies, or the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            self.ensure_alive()
            if check():
                return
            if time.monotonic() >= deadline:
                raise ReadinessTimeoutError(
                    f"{self.name}: {what} not reached within {timeout:.0f}s; "
                    f"last output:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def wait_http_ok(self, url: str, timeout: float = 30.0) -> None:
        """Poll ``GET url`` until it answers 200."""
        with httpx.Client(timeout=2.0, trust_env=False) as client:

            def ok() -> bool:
                try:
                    return client.get(url).status_code == httpx.codes.OK
                except httpx.TransportError:
                    return False

            self.wait_until(ok, timeout, f"200 from {url}", interval=0.2)
