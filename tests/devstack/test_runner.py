import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from stepmail_devstack.processes import free_port

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


def _pump(stream, lines: "queue.Queue[str]") -> None:
    with stream:
        for raw in stream:
            lines.put(raw.decode("utf-8", "replace"))


def _wait_line(lines: "queue.Queue[str]", text: str, seen: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{text!r} not printed; output:\n{''.join(seen[-60:])}"
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        seen.append(line)
        if text in line:
            return


def test_run_stops_every_child_on_sigint(repo_root):
    state = Path(tempfile.mkdtemp(prefix="stepmail-devstack-"))
    state.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "SMTP_URL"}
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    argv = [
        sys.executable,
        "-m",
        "stepmail_devstack",
        "run",
        f"--pg-port={free_port()}",
        f"--kafka-port={free_port()}",
        f"--smtp-port={free_port()}",
        f"--mail-http-port={free_port()}",
        "--services=first,second",
        "--service-module=first=dummy_service",
        "--service-module=second=dummy_service",
        f"--service-port=first={free_port()}",
        f"--service-port=second={free_port()}",
        f"--state-dir={state}",
    ]
    runner = subprocess.Popen(
        argv, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(runner.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        _wait_line(lines, "stepmail is running", seen, timeout=60)
        children = psutil.Process(runner.pid).children(recursive=True)
        names = [" ".join(c.cmdline()) for c in children]
        assert any("postgres" in n for n in names)
        assert any("tansu" in n for n in names)
        assert any("stepmail_devstack.catcher" in n for n in names)
        assert sum("dummy_service" in n for n in names) == 2

        second = next(c for c in children if "dummy_service" in " ".join(c.cmdline()))
        second.kill()
        _wait_line(lines, "exited unexpectedly", seen, timeout=10)

        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"left running: {alive}"
        assert (state / "pgdata" / "PG_VERSION").is_file()
        assert (state / "logs" / "first.log").is_file()
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        reader.join(10)
        shutil.rmtree(state, ignore_errors=True)
