"""`python -m streamer.benchmark memory`: the settings view's memory and lookup cost by size.

For each size, a fresh child process imports what a worker imports (Faust, aiokafka, the
sinks), reads the settings table rows one by one from a file as a worker reads them from the
topic (each row dropped once applied), and reports its RSS and the cost of `effective()` on
random workspaces. The rows come from the pipeline benchmark's settings generator at the same
proportions (100 workspaces a partner, 20% of partners partner-wide, half of the other
workspaces with their own configuration, secrets encrypted).
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from streamer.benchmark import loop
from streamer.benchmark.procstat import status_kb

KEYS = {"bench": b"b" * 32}


def _rows(workspaces: int) -> list[tuple[bytes, bytes]]:
    from streamer.benchmark.workload import build_settings, datadog_destination

    partners = max(1, workspaces // 100)
    return build_settings(datadog_destination("https://http-intake.logs.datadoghq.eu", "dd-api-key-0123456789"),
                          workspaces=workspaces, partners=partners, partner_wide=max(1, partners // 5),
                          encryption_keys=KEYS, apply=False).rows


def _rows_file(workspaces: int, directory: Path) -> Path:
    import base64

    path = directory / f"rows-{workspaces}.txt"
    with path.open("w") as f:
        for k, v in _rows(workspaces):
            f.write(f"{base64.b64encode(k).decode()} {base64.b64encode(v).decode()}\n")
    return path


def _load_worker_imports() -> None:
    """What a worker process has loaded before it reads the settings table, so the RSS
    measured on top of it is the settings' own."""
    import aiokafka  # noqa: F401
    import faust  # noqa: F401

    import streamer.sinks.http.service  # noqa: F401
    import streamer.sinks.s3.service  # noqa: F401


def _child(rows_path: str, lookups: int) -> dict[str, Any]:
    import base64

    from streamer.settings.state import SettingsState

    _load_worker_imports()

    gc.collect()
    base = status_kb()
    state = SettingsState()
    started = time.perf_counter()
    with open(rows_path) as f:
        for offset, line in enumerate(f):
            k, v = line.split()
            state.apply(base64.b64decode(k), base64.b64decode(v), offset)
    apply_s = time.perf_counter() - started
    gc.collect()
    after = status_kb()
    ids = list(state.workspaces)
    rng = random.Random(3)
    probe = [ids[rng.randrange(len(ids))] for _ in range(lookups)]
    effective, get = state.effective, state.workspaces.get

    def median_ns(fn) -> float:
        timings = []
        for _ in range(7):
            t = time.perf_counter()
            for ws in probe:
                fn(ws)
            timings.append(time.perf_counter() - t)
        return sorted(timings)[3] / lookups * 1e9

    return {"workspaces": len(state.workspaces), "partner_configs": len(state.partners),
            "routes": sum(1 for e in state.workspaces.values() if e.route is not None),
            "rss_before_mb": base["VmRSS"] / 1024, "rss_mb": after["VmRSS"] / 1024, "hwm_mb": after["VmHWM"] / 1024,
            "state_mb": (after["VmRSS"] - base["VmRSS"]) / 1024,
            "bytes_per_workspace": (after["VmRSS"] - base["VmRSS"]) * 1024 / max(1, len(state.workspaces)),
            "apply_s": apply_s, "effective_ns": median_ns(effective), "dict_get_ns": median_ns(get)}


def run_memory(workspaces: int = 100_000, small: int = 1_000, lookups: int = 200_000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sizes = sorted({small, (small * workspaces) ** 0.5 // 1, workspaces})
    with tempfile.TemporaryDirectory(prefix="streamer-bench-mem-") as tmp:
        for size in map(int, sizes):
            path = _rows_file(size, Path(tmp))
            res = subprocess.run([sys.executable, "-m", "streamer.benchmark.memory", str(path), str(lookups)],
                                 capture_output=True, text=True, check=True)
            out[str(size)] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def run_recovery(workspaces: int) -> dict[str, Any]:
    """A worker's settings view recovering `workspaces` workspaces' rows from a real broker:
    the rows are produced to a settings table topic (as `streamer topics apply` makes it:
    one partition, compacted) on a broker started for this, then a child process with the
    worker's imports runs `SettingsView` on it until ready, as a starting worker does."""
    import asyncio
    import uuid

    from streamer import topics as T
    from streamer.benchmark.pipeline import _produce, _topics
    from streamer.dev.local import Kafka, free_port

    with tempfile.TemporaryDirectory(prefix="streamer-bench-recovery-") as tmp:
        rows = _rows(workspaces)
        kafka = Kafka(Path(tmp) / "kafka", free_port())
        kafka.start()
        try:
            prefix = f"r{uuid.uuid4().hex[:8]}."
            started = time.perf_counter()
            asyncio.run(_topics(kafka.bootstrap, prefix))
            asyncio.run(_produce(kafka.bootstrap, prefix + T.SETTINGS_TABLE, rows))
            produce_s = time.perf_counter() - started
            del rows
            res = subprocess.run([sys.executable, "-m", "streamer.benchmark.memory", "--recover", kafka.bootstrap,
                                  prefix + T.SETTINGS_TABLE], capture_output=True, text=True, check=True)
        finally:
            kafka.stop()
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["produce_s"] = produce_s
    return out


def _recover(bootstrap: str, topic: str) -> dict[str, Any]:
    import asyncio

    from streamer.settings.view import SettingsView

    _load_worker_imports()

    async def main() -> dict[str, Any]:
        from streamer.config import Config
        from streamer.gc_tuning import tune_gc

        base = status_kb()
        view = SettingsView(bootstrap, topic)
        threshold = Config().gc_gen0_threshold
        started = time.perf_counter()
        tune_gc(threshold)  # as the worker does (streamer/app.py, SettingsViewService)
        await view.start()
        await view.ready.wait()
        tune_gc(threshold)
        wall = time.perf_counter() - started
        gc.collect()
        after = status_kb()
        await view.stop()
        return {"workspaces": len(view.state.workspaces), "rows": view.recovered_rows,
                "recovery_s": view.recovery_seconds, "ready_s": wall, "rss_before_mb": base["VmRSS"] / 1024,
                "rss_mb": after["VmRSS"] / 1024, "hwm_mb": after["VmHWM"] / 1024}

    return loop.run(main())


def report_recovery(r: dict[str, Any]) -> str:
    return (f"settings view recovered from the broker: {r['workspaces']:,} workspaces ({r['rows']:,} rows, produced "
            f"in {r['produce_s']:.1f}s) ready in {r['ready_s']:.1f}s (reading and applying: {r['recovery_s']:.1f}s); "
            f"RSS {r['rss_mb']:.0f} MB (peak {r['hwm_mb']:.0f} MB, {r['rss_before_mb']:.0f} MB before the rows)")


def report(r: dict[str, Any]) -> str:
    lines = ["settings view by size (a child process each, with the worker's imports loaded):"]
    for size, m in r.items():
        lines.append(f"  {int(size):>7} workspaces ({m['routes']} own configurations, {m['partner_configs']} "
                     f"partner-wide): RSS {m['rss_mb']:.0f} MB (before the rows {m['rss_before_mb']:.0f} MB; state "
                     f"{m['state_mb']:.1f} MB = {m['bytes_per_workspace']:.0f} B/workspace), rows applied in "
                     f"{m['apply_s']:.2f}s, effective() {m['effective_ns']:.0f} ns (of which the bare "
                     f"dict lookup {m['dict_get_ns']:.0f} ns)")
    sizes = sorted(r, key=int)
    a, b = r[sizes[0]], r[sizes[-1]]
    lines.append(f"  effective() at {int(sizes[-1]):,} vs {int(sizes[0]):,} workspaces: "
                 f"x{b['effective_ns'] / a['effective_ns']:.2f}; a bare dict lookup of the same keys: "
                 f"x{b['dict_get_ns'] / a['dict_get_ns']:.2f} (two dict lookups, no scan: "
                 f"what grows is cache misses once the state outgrows the CPU caches)")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--recover":
        print(json.dumps(_recover(sys.argv[2], sys.argv[3])))
    else:
        print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))))
