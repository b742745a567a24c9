"""The benchmark's own event loop is the workers' (STREAMER_EVENT_LOOP, uvloop by default), so
the raw passthrough it compares them with, and the client-CPU measurements, run on the same
loop implementation as the code they stand beside."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, Mapping

from streamer.config import Config


def worker_loop(env: Mapping[str, str] | None = None) -> str:
    """The loop a worker started with `env` (on top of this process's environment) runs on."""
    import os

    chosen = (env or {}).get("STREAMER_EVENT_LOOP") or os.environ.get("STREAMER_EVENT_LOOP")
    return chosen or Config.model_fields["event_loop"].default


def run(main: Coroutine[Any, Any, Any], env: Mapping[str, str] | None = None) -> Any:
    if worker_loop(env) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
