"""running_server: `ditkit serve` in a child process, for tests, benchmarks and scripts.

    with running_server("shapes-64,shapes-upscale", "--max-batch", "2") as server:
        urllib.request.urlopen(server.url + "/healthz")
    print(server.returncode)   # 0: it stopped cleanly on SIGINT

The child binds port 0 by default (`--port 0`: the system picks a free port, so two servers
never race for one) and prints the address it took; we read it from the child's log, then
wait for /healthz. Leaving the block sends SIGINT (Ctrl-C: uvicorn finishes the requests in
flight and the command exits 0), and kills the child if it has not exited in stop_timeout
seconds. Only the standard library: importing this needs none of the [serve] extra.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

ADDRESS = re.compile(r"^ditkit serve: .* on (http://\S+?)/?$", re.MULTILINE)  # the line cli/serve.py prints


@dataclass
class ServerProcess:
    """A running `ditkit serve`: its base URL (no trailing slash), the child process and its log
    (stdout and stderr together)."""
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return json.loads(response.read()).get("status") == "ok"
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return False


def stop_server(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
    """Send sig (SIGINT or SIGTERM: both stop `ditkit serve` cleanly) and wait; kill after timeout.
    Returns the exit code (negative: the signal that ended it)."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def running_server(models: str = "shapes-64", *args: str, host: str = "127.0.0.1", port: int = 0,
                   env: Mapping[str, str] | None = None, log_path: str | Path | None = None,
                   startup_timeout: float = 180.0, stop_timeout: float = 30.0,
                   stop_signal: int = signal.SIGINT) -> Iterator[ServerProcess]:
    """Start `python -m ditkit serve --host HOST --port PORT --models MODELS *args` and yield a
    ServerProcess once /healthz answers; stop it (stop_signal) when the block ends. env: variables
    added to this process's environment for the child. log_path: where its output goes (default:
    a temporary file, removed afterwards). RuntimeError, with the log, if it exits or does not
    answer within startup_timeout seconds."""
    own_log = log_path is None
    if own_log:
        fd, name = tempfile.mkstemp(prefix="ditkit-serve-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    cmd = [sys.executable, "-m", "ditkit", "serve", "--host", host, "--port", str(port), "--models", models, *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = ServerProcess("", process, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ditkit serve exited with {process.returncode}:\n{server.log()}")
            if not server.url and (found := ADDRESS.search(server.log())):
                server.url = found.group(1)
            if server.url and _healthy(server.url):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ditkit serve did not answer /healthz within {startup_timeout:.0f} s:\n"
                                   f"{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        stop_server(process, stop_signal, stop_timeout)
        if own_log:
            log_path.unlink(missing_ok=True)
