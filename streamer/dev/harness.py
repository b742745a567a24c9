"""Run real workers as subprocesses against local services: used by the tests and the benchmark.

The keys below are fixed development keys for local runs only; a deployment gets its own
from its secret store (STREAMER_SIGNING_KEYS, STREAMER_ENCRYPTION_KEYS).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from streamer.dev.local import free_port

SIGNING_KEY = base64.b64encode(b"s" * 32).decode()
ENCRYPTION_KEY = base64.b64encode(b"e" * 32).decode()


def worker_env(bootstrap: str, s3: str, prefix: str, tmp: Path) -> dict[str, str]:
    return {
        "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMER_TOPIC_PREFIX": prefix,
        "STREAMER_APP_ID": f"app-{prefix.rstrip('.')}",
        "STREAMER_SIGNING_KEYS": f"test-k1:{SIGNING_KEY}",
        "STREAMER_ENCRYPTION_KEYS": f"test-e1:{ENCRYPTION_KEY}",
        "STREAMER_ALLOW_PRIVATE_DESTINATIONS": "true",
        "STREAMER_S3_ENDPOINT_URL": s3,
        "STREAMER_BATCH_LINGER_S": "0.1",
        "STREAMER_DATA_DIR": str(tmp / "data"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


class WorkerProcess:
    """A real `streamer worker` subprocess, as an SRE would run it."""

    def __init__(self, env: dict[str, str], workdir: Path, argv: list[str] | None = None):
        self.argv = argv or ["-m", "streamer", "worker"]  # the interpreter's arguments
        self.env = {**os.environ, **env}
        self.port = free_port()
        self.env["STREAMER_WEB_PORT"] = str(self.port)
        self.env["STREAMER_DATA_DIR"] = str(workdir / "data")
        self.workdir = workdir
        self.log_path = workdir / "worker.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, *self.argv], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            if self.get("/ready")[0] == 200:
                return
            time.sleep(0.3)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


async def make_bucket(endpoint: str, bucket: str) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        await s3.create_bucket(Bucket=bucket)
