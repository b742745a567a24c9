"""The sample flow that `streamer demo` and docker compose's sample-producer run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from streamer.dev.receiver import Receiver
from tests.conftest import SAMPLES
from tests.support import make_bucket, s3_objects


async def test_demo_seeds_a_running_stack(env, worker_factory, s3):
    receiver = Receiver()
    await receiver.start()
    try:
        await make_bucket(s3, "audit-logs")
        worker_factory().wait_ready()
        seed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamer", "demo", "--use-running", "--samples", str(SAMPLES),
            "--receiver-url", f"http://127.0.0.1:{receiver.port}", "--bucket", "audit-logs",
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await seed.communicate()
        assert seed.returncode == 0, out.decode()
        assert out.decode().count("-> accepted") == 5
        objects = await s3_objects(s3, "audit-logs", 2)
        assert len([k for k in objects if k.startswith("audit/5234/")]) == 2
        for _ in range(100):
            if len(receiver.received) >= 2:
                break
            await asyncio.sleep(0.2)
        entries = [item["logEntries"] for _, item in receiver.received]
        assert sorted(e.get("event", "job") for e in entries) == ["job", "user_login"]
        assert all(path == "/api/v2/logs" for path, _ in receiver.received)
    finally:
        await receiver.stop()
