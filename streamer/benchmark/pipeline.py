"""`python -m streamer.benchmark`: the pipeline against a raw aiokafka passthrough, on a real broker.

One invocation starts a Kafka broker (from the Maven jars in .cache/) and moto S3 on free
loopback ports, and a Datadog-style receiver in this process. Each run then gets fresh topics
(its own prefix) and:

1. writes the settings table directly (5,000 workspaces by default, see workload.py) and
   pre-produces N events of the mix to the raw topics;
2. baseline: an aiokafka consumer/producer pair copies those N records to an output topic
   (batches of 500, acks=all, linger 5 ms, commits every second: what the worker does, minus
   the processing);
3. floor: `streamer/benchmark/floor.py` in the worker's place: the same Faust application
   copies the records to a second topic and acks them there, with none of streamer's work:
   the part of the worker's CPU per event that Faust, aiokafka and the batching take;
4. REST: starts `streamer worker` subprocess(es); the clock runs from the moment a worker
   reports its first consumed record (/metrics polled every 20 ms) to the moment the
   receiver has every event: N / that time is the pipeline's events/s (startup excluded);
   CPU time per event is the worker's utime+stime over the same span;
5. latency: the same warm worker, events offered at a fixed rate; each carries its send time,
   the receiver takes p50/p99 of arrival - send;
6. S3: fresh topics, every workspace under S3 partner-wide configurations (one aiobotocore
   client per destination), a new worker, events/s until its /metrics count every delivery
   to moto as done.

Peak RSS is the worker's VmHWM (its whole life, startup and settings included).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamer import topics as T
from streamer.benchmark import loop, workload
from streamer.benchmark.procstat import cpu_seconds, status_kb
from streamer.kafka_client import client_kwargs
from streamer.benchmark.floor import TOPIC as FLOOR_TOPIC
from streamer.benchmark.receiver import Receiver
from streamer.benchmark.s3standin import S3StandIn
from streamer.config import parse_keyring
from streamer.dev.local import Kafka, MotoS3, free_port
from streamer.topics_admin import apply_topics

BIG = 52 * 1024 * 1024
DD_API_KEY = "bench-dd-api-key"
BATCH = 500
# Worker knobs the bench leaves at their deployed defaults unless --worker-env sets them.
TEST_ONLY = ("STREAMER_BATCH_LINGER_S",)


@dataclass
class Options:
    runs: int = 3
    events: int = 40_000
    s3_events: int = 3_000
    # Five times moto's: the stand-in takes about six times moto's rate, and a short phase
    # is mostly the worker's first requests to each destination.
    s3_keepalive_events: int = 15_000
    rate: int = 2_000
    latency_seconds: float = 15.0
    workers: int = 1
    workspaces: int = 5_000
    partner_wide: int = 10  # of the 50 partners (100 workspaces each), those with a partner-wide destination
    skip: list[str] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)
    profile_worker: bool = False

    @classmethod
    def from_args(cls, a) -> "Options":
        env = {}
        for item in a.worker_env:
            name, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--worker-env wants NAME=VALUE, got {item!r}")
            env[name] = value
        quick = a.quick
        return cls(runs=1 if quick and a.runs == 3 else a.runs,
                   events=a.events or (15_000 if quick else 40_000),
                   s3_events=a.s3_events or (600 if quick else 3_000),
                   s3_keepalive_events=a.s3_keepalive_events or (3_000 if quick else 15_000), rate=a.rate,
                   latency_seconds=a.latency_seconds or (6.0 if quick else 15.0), workers=a.workers,
                   workspaces=a.workspaces, partner_wide=a.partner_wide, skip=a.skip, worker_env=env,
                   profile_worker=a.profile_worker)


_BROKER_PID: int | None = None  # the benchmark's own Kafka: its CPU is part of every phase's cost


def _broker_cpu() -> float:
    """The broker JVM's CPU seconds so far (0 if unreadable): with the clients' own, what a
    phase costs the machine per event, the input of the scaling estimate in docs/performance.md."""
    try:
        return cpu_seconds(_BROKER_PID) if _BROKER_PID else 0.0
    except OSError:
        return 0.0


def run_pipeline(opts: Options) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="streamer-bench-") as tmp:
        root = Path(tmp)
        kafka = Kafka(root / "kafka", free_port())
        s3 = MotoS3(root / "s3", free_port())
        print(f"starting Kafka on {kafka.bootstrap} and moto S3 on {s3.endpoint} ...", flush=True)
        kafka.start()
        global _BROKER_PID
        _BROKER_PID = kafka.pid()
        try:
            s3.start()
            return loop.run(_main(opts, kafka.bootstrap, s3.endpoint, root), opts.worker_env)
        finally:
            s3.stop()
            kafka.stop()


async def _main(opts: Options, bootstrap: str, s3: str, root: Path) -> dict[str, Any]:
    from streamer.dev.harness import ENCRYPTION_KEY, worker_env

    receiver = Receiver(DD_API_KEY)
    await receiver.start()
    standin = S3StandIn()
    await standin.start()
    keys = parse_keyring(f"test-e1:{ENCRYPTION_KEY}")
    rest_settings = workload.build_settings(workload.datadog_destination(receiver.base_url, DD_API_KEY),
                                            workspaces=opts.workspaces, partners=max(1, opts.workspaces // 100),
                                            partner_wide=opts.partner_wide, encryption_keys=keys)
    runs: list[dict[str, Any]] = []
    try:
        for run in range(opts.runs):
            print(f"run {run + 1}/{opts.runs}", flush=True)
            out: dict[str, Any] = {}
            base_env = lambda prefix, where: _worker_env(worker_env(bootstrap, s3, prefix, where), opts)  # noqa: E731
            prefix = f"b{uuid.uuid4().hex[:8]}."
            await _topics(bootstrap, prefix)
            await _produce(bootstrap, prefix + T.SETTINGS_TABLE, rest_settings.rows)
            events = workload.raw_events(rest_settings, opts.events, seed=run + 1)
            await _produce_events(bootstrap, prefix, events)
            if "baseline" not in opts.skip:
                out["baseline"] = await _passthrough(bootstrap, prefix, opts.events)
                out["baseline_pipelined"] = await _passthrough(bootstrap, prefix, opts.events, pipelined=True)
                for name in ("baseline", "baseline_pipelined"):
                    print(f"  {name.replace('_', ' ')} passthrough: {out[name]['events_per_s']:,.0f} events/s, "
                          f"{out[name]['cpu_us_per_event']:,.0f} µs CPU/event (broker "
                          f"{out[name]['broker_cpu_us_per_event']:,.0f})", flush=True)
            if "floor" not in opts.skip:
                out["floor"] = await _floor(opts, base_env(prefix, root / f"run{run}-floor"), opts.events,
                                            root / f"run{run}-floor")
                print(f"  framework floor (two hops, no work): {out['floor']['events_per_s']:,.0f} events/s, "
                      f"{out['floor']['cpu_us_per_event']:,.0f} µs CPU/event (broker "
                      f"{out['floor']['broker_cpu_us_per_event']:,.0f})", flush=True)
            if "rest" not in opts.skip:
                out.update(await _rest(opts, receiver, base_env(prefix, root / f"run{run}"), bootstrap, prefix,
                                       rest_settings, events, root / f"run{run}"))
            if "s3" not in opts.skip:
                out["s3"] = await _s3(opts, base_env, bootstrap, s3, keys, root / f"run{run}-s3", run)
                print(f"  S3 (moto): {out['s3']['events_per_s']:,.0f} events/s, "
                      f"{out['s3']['cpu_us_per_event']:,.0f} µs CPU/event", flush=True)
                out["s3_keepalive"] = await _s3(opts, base_env, bootstrap, s3, keys, root / f"run{run}-s3k", run,
                                                standin)
                print(f"  S3 (keep-alive stand-in): {out['s3_keepalive']['events_per_s']:,.0f} events/s, "
                      f"{out['s3_keepalive']['cpu_us_per_event']:,.0f} µs CPU/event (stand-in "
                      f"{out['s3_keepalive']['server_cpu_us_per_event']:,.0f})", flush=True)
            runs.append(out)
    finally:
        await receiver.stop()
        await standin.stop()
    return {"options": {**opts.__dict__}, "settings": {"workspaces": opts.workspaces,
            "destinations": rest_settings.destinations, "rows": len(rest_settings.rows)},
            "runs": runs, "median": _medians(runs)}


def _worker_env(env: dict[str, str], opts: Options) -> dict[str, str]:
    env = {k: v for k, v in env.items() if k not in TEST_ONLY}
    env["STREAMER_LOG_LEVEL"] = "warning"
    return {**env, **opts.worker_env}


# -- Kafka helpers ----------------------------------------------------------------------------

async def _topics(bootstrap: str, prefix: str) -> None:
    report = await apply_topics(bootstrap, prefix)
    assert report.ok, report.drift
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(prefix + name, 6, 1, topic_configs={"max.message.bytes": str(50 * 1024 * 1024)})
                                   for name in ("bench.passthrough", FLOOR_TOPIC)])
    finally:
        await admin.close()


def _producer(bootstrap: str, **kw) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=BIG, **client_kwargs(), **kw)


async def _produce(bootstrap: str, topic: str, rows: list[tuple[bytes, bytes]]) -> None:
    p = _producer(bootstrap, linger_ms=20, acks="all")
    await p.start()
    try:
        futs = [await p.send(topic, key=k, value=v) for k, v in rows]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def _produce_events(bootstrap: str, prefix: str, events: list[tuple[str, str, int]], sent_ns: int = 0) -> None:
    p = _producer(bootstrap, linger_ms=20, acks="all", max_batch_size=1024 * 1024)
    await p.start()
    try:
        futs = []
        for kind, ws, seq in events:
            futs.append(await p.send(prefix + workload.TOPIC_OF_KIND[kind], key=ws.encode(),
                                     value=workload.event_bytes(kind, ws, seq, sent_ns)))
            if len(futs) >= 5000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def _passthrough(bootstrap: str, prefix: str, n: int, timeout: float = 300,
                       pipelined: bool = False) -> dict[str, Any]:
    """Consume the raw topics and produce every record as it is to one output topic.

    Awaited (the default) waits for every batch's acks before taking the next, as the worker
    hands a batch on before acking it. `pipelined` sends the next batch while earlier ones are
    still unacked and waits only before each commit: what the broker and the client can move
    on this machine, the ceiling of any consume-transform-produce loop."""
    consumer = AIOKafkaConsumer(*(prefix + t for t in T.RAW_TOPICS), bootstrap_servers=bootstrap,
                                group_id=f"passthrough-{'pipelined-' if pipelined else ''}{prefix}", auto_offset_reset="earliest",
                                enable_auto_commit=False, max_partition_fetch_bytes=BIG, fetch_max_bytes=BIG,
                                **client_kwargs())
    producer = _producer(bootstrap, linger_ms=5, acks="all", max_batch_size=1024 * 1024)  # as the worker produces
    out_topic = prefix + "bench.passthrough"
    await consumer.start()
    await producer.start()
    cpu0, broker0 = cpu_seconds(), _broker_cpu()
    try:
        count, t0, last_commit = 0, None, time.monotonic()
        futs: list = []
        deadline = time.monotonic() + timeout
        while count < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=BATCH)
            records = [m for msgs in batch.values() for m in msgs]
            if not records:
                continue
            if t0 is None:
                t0, cpu0, broker0 = time.perf_counter(), cpu_seconds(), _broker_cpu()
            futs += [await producer.send(out_topic, key=m.key, value=m.value, headers=list(m.headers))
                     for m in records]
            if not pipelined:
                await asyncio.gather(*futs)
                futs = []
            count += len(records)
            if time.monotonic() - last_commit >= 1.0:
                await asyncio.gather(*futs)  # the commit follows the acks, pipelined or not
                futs = []
                await consumer.commit()
                last_commit = time.monotonic()
        await asyncio.gather(*futs)
        await consumer.commit()
        elapsed = time.perf_counter() - (t0 or time.perf_counter())
        cpu, broker = cpu_seconds() - cpu0, _broker_cpu() - broker0
    finally:
        await producer.stop()
        await consumer.stop()
    if count < n:
        raise RuntimeError(f"passthrough copied only {count} of {n} records in {timeout:.0f}s")
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed, "cpu_us_per_event": cpu / n * 1e6,
            "broker_cpu_us_per_event": broker / n * 1e6}


# -- workers ----------------------------------------------------------------------------------

class Workers:
    def __init__(self, env: dict[str, str], workdir: Path, count: int, profile_to: Path | None = None,
                 argv: list[str] | None = None):
        from streamer.dev.harness import WorkerProcess

        argv = argv or ["-m", "streamer", "worker"]
        self.procs = [WorkerProcess(env, workdir / f"worker{i}", argv) for i in range(count)]
        if profile_to is not None:  # the first worker runs under cProfile, its stats written at exit
            self.procs[0].argv = ["-m", "cProfile", "-o", str(profile_to), *argv]
        self._http: aiohttp.ClientSession | None = None

    async def start(self, timeout: float = 120) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        for w in self.procs:
            w.start()
        deadline = time.monotonic() + timeout
        for w in self.procs:
            while True:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker exited {w.proc.returncode}:\n{w.log()[-4000:]}")
                if (await self._get(w, "/ready"))[0] == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready after {timeout:.0f}s:\n{w.log()[-4000:]}")
                await asyncio.sleep(0.05)

    async def _get(self, w, path: str) -> tuple[int, str]:
        try:
            async with self._http.get(w.url(path)) as r:
                return r.status, await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return 0, ""

    async def metric(self, name: str, labels: str = "") -> float:
        """Sum over the workers of a counter's samples whose labels contain `labels`."""
        total = 0.0
        for w in self.procs:
            _, text = await self._get(w, "/metrics")
            for line in text.splitlines():
                if line.startswith(name + "{") and labels in line:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    async def first_consumption(self, timeout: float = 120) -> float:
        """perf_counter time at which a worker first reported a consumed record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.metric("streamer_events_consumed_total") > 0:
                return time.perf_counter() - 0.01  # half the polling period
            await asyncio.sleep(0.02)
        raise RuntimeError("no worker consumed anything:\n" + self.procs[0].log()[-4000:])

    async def floor_counts(self) -> tuple[int, int]:
        """Records copied and drained by framework-floor workers (streamer/benchmark/floor.py)."""
        copied = drained = 0
        for w in self.procs:
            status, text = await self._get(w, "/floor")
            if status == 200:
                counts = json.loads(text)
                copied, drained = copied + counts["copied"], drained + counts["drained"]
        return copied, drained

    def problems(self, limit: int = 5) -> dict[str, Any]:
        """Warnings and errors the workers logged: a run with failed deliveries is suspect."""
        lines = [line for w in self.procs for line in w.log().splitlines()
                 if '"level":"warning"' in line or '"level":"error"' in line]
        return {"count": len(lines), "first": [line[:400] for line in lines[:limit]]}

    def cpu(self) -> float:
        return sum(cpu_seconds(w.proc.pid) for w in self.procs)

    def peak_rss_mb(self) -> list[float]:
        return [status_kb(w.proc.pid)["VmHWM"] / 1024 for w in self.procs]

    async def stop(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.procs))
        if self._http is not None:
            await self._http.close()


# -- phases -----------------------------------------------------------------------------------

async def _floor(opts: Options, env: dict[str, str], n: int, workdir: Path) -> dict[str, Any]:
    """The framework floor on the run's records; timed as the REST phase is, from the first
    record a worker took to the last one drained."""
    workers = Workers(env, workdir, opts.workers, argv=["-m", "streamer.benchmark.floor"])
    try:
        await workers.start()
        t0 = None
        cpu0 = broker0 = 0.0
        drained = 0
        deadline = time.monotonic() + max(120.0, n / 200)
        while drained < n and time.monotonic() < deadline:
            copied, drained = await workers.floor_counts()
            if t0 is None and copied > 0:
                t0 = time.perf_counter() - 0.01  # half the polling period
                cpu0, broker0 = workers.cpu(), _broker_cpu()
            await asyncio.sleep(0.02)
        t1 = time.perf_counter()
        cpu, broker = workers.cpu() - cpu0, _broker_cpu() - broker0
        if drained < n or t0 is None:
            raise RuntimeError(f"floor: {drained} of {n} drained; worker log:\n{workers.procs[0].log()[-4000:]}")
    finally:
        await workers.stop()
    return {"events": n, "seconds": t1 - t0, "events_per_s": n / (t1 - t0), "cpu_us_per_event": cpu / n * 1e6,
            "broker_cpu_us_per_event": broker / n * 1e6, "worker_problems": workers.problems()}


async def _rest(opts: Options, receiver: Receiver, env: dict[str, str], bootstrap: str, prefix: str,
                settings: workload.Settings, events: list, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = len(events)
    receiver.expect(0, n)
    profile = workdir / "worker-rest.prof" if opts.profile_worker else None
    workers = Workers(env, workdir, opts.workers, profile)
    try:
        await workers.start()
        t0 = await workers.first_consumption()
        cpu0, own0, broker0 = workers.cpu(), cpu_seconds(), _broker_cpu()
        try:
            await asyncio.wait_for(receiver.done.wait(), timeout=max(120.0, n / 200))
        except asyncio.TimeoutError:
            raise RuntimeError(f"receiver got {receiver.unique} of {n} events; worker log:\n"
                               f"{workers.procs[0].log()[-4000:]}") from None
        t1 = time.perf_counter()
        cpu, own, broker = workers.cpu() - cpu0, cpu_seconds() - own0, _broker_cpu() - broker0
        elapsed = t1 - t0
        out["rest"] = {"events": n, "seconds": elapsed, "events_per_s": n / elapsed,
                       "cpu_us_per_event": cpu / n * 1e6, "receiver_cpu_us_per_event": own / n * 1e6,
                       "broker_cpu_us_per_event": broker / n * 1e6,
                       "requests": receiver.phase_requests,
                       "items_per_request": receiver.items / max(1, receiver.phase_requests),
                       "duplicates": receiver.duplicates, "destinations": settings.destinations}
        print(f"  REST pipeline: {n / elapsed:,.0f} events/s, {cpu / n * 1e6:.0f} µs CPU/event (receiver "
              f"{own / n * 1e6:.0f}, broker {broker / n * 1e6:.0f}), {out['rest']['items_per_request']:.1f} "
              f"items/request", flush=True)
        if "latency" not in opts.skip:
            cpu0 = workers.cpu()
            out["latency"] = await _latency(opts, receiver, bootstrap, prefix, settings, n)
            lat = out["latency"]
            lat["cpu_us_per_event"] = (workers.cpu() - cpu0) / max(1, lat["events"]) * 1e6
            print(f"  latency at {lat['offered_per_s']:,.0f} events/s: p50 {lat['p50_ms']:.0f} ms, "
                  f"p99 {lat['p99_ms']:.0f} ms, {lat['cpu_us_per_event']:.0f} µs CPU/event", flush=True)
        out["rest"]["peak_rss_mb"] = max(workers.peak_rss_mb())
        out["rest"]["peak_rss_mb_per_worker"] = workers.peak_rss_mb()
    finally:
        await workers.stop()
    out["rest"]["worker_problems"] = workers.problems()
    if out["rest"]["worker_problems"]["count"]:
        print(f"  worker warnings/errors: {out['rest']['worker_problems']}", flush=True)
    if profile is not None:
        out["rest"]["profile"] = _profile_summary(profile)
        print(out["rest"]["profile"], flush=True)
    return out


def _by_package(stats) -> list[tuple[str, float]]:
    """Own time (tottime) summed by the package a function lives in."""
    totals: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        if "site-packages/" in filename:
            package = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        elif "/streamer/" in filename:
            package = "streamer/" + filename.split("/streamer/", 1)[1]
        elif filename == "~":
            package = "builtins: " + name.split(" of ")[0].strip("<>{}").replace("method ", "")[:40]
        else:
            package = "stdlib/" + Path(filename).name
        totals[package] = totals.get(package, 0.0) + tottime
    return sorted(totals.items(), key=lambda kv: -kv[1])[:30]


def _profile_summary(path: Path, top: int = 40) -> str:
    import io
    import pstats

    if not path.exists():
        return f"(no profile written to {path}: the worker did not exit cleanly)"
    keep = Path("bench-results") / f"{time.strftime('%Y%m%dT%H%M%S')}-worker.prof"
    keep.parent.mkdir(exist_ok=True)
    keep.write_bytes(path.read_bytes())
    buf = io.StringIO()
    buf.write(f"worker profile (cProfile, kept in {keep}); time by package:\n")
    stats = pstats.Stats(str(path), stream=buf)
    for package, seconds in _by_package(stats):
        buf.write(f"  {seconds:8.2f}s  {package}\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


async def _latency(opts: Options, receiver: Receiver, bootstrap: str, prefix: str,
                   settings: workload.Settings, first_seq: int) -> dict[str, Any]:
    total = int(opts.rate * opts.latency_seconds)
    rng = random.Random(first_seq)
    plan = [(kind, settings.workspace_for(kind, rng)) for kind in workload.kinds(total, seed=first_seq)]
    receiver.expect(first_seq, total)
    p = _producer(bootstrap, linger_ms=0, acks="all")
    await p.start()
    tick = 0.01
    try:
        start = time.perf_counter()
        sent = 0
        lag_max = 0.0
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * opts.rate) + 1)
            for i in range(sent, due):
                kind, ws = plan[i]
                value = workload.event_bytes(kind, ws, first_seq + i, time.time_ns())
                await p.send(prefix + workload.TOPIC_OF_KIND[kind], key=ws.encode(), value=value)
            sent = due
            lag_max = max(lag_max, (time.perf_counter() - start) - sent / opts.rate)
            await asyncio.sleep(tick)
        offered = total / (time.perf_counter() - start)
        await p.flush()
        try:
            await asyncio.wait_for(receiver.done.wait(), timeout=120)
        except asyncio.TimeoutError:
            pass
    finally:
        await p.stop()
    lat = sorted(receiver.latencies_ns)
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] / 1e6 if lat else float("nan")  # noqa: E731
    return {"offered_per_s": offered, "events": total, "received": receiver.unique,
            "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99), "max_ms": q(1.0),
            "producer_behind_max_s": lag_max}


async def _s3(opts: Options, base_env, bootstrap: str, s3: str, keys: dict[str, bytes], workdir: Path,
              run: int, standin: S3StandIn | None = None) -> dict[str, Any]:
    """Into moto, or (`standin`) into a server that keeps connections open as S3 does."""
    from streamer.dev.harness import make_bucket

    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    if standin is None:
        await make_bucket(s3, bucket)
    else:
        s3 = standin.endpoint
    partners = max(1, opts.workspaces // 100)
    settings = workload.build_settings(workload.s3_destination(s3, bucket), workspaces=opts.workspaces,
                                       partners=partners, partner_wide=partners, encryption_keys=keys, seed=11)
    prefix = f"b{uuid.uuid4().hex[:8]}."
    await _topics(bootstrap, prefix)
    await _produce(bootstrap, prefix + T.SETTINGS_TABLE, settings.rows)
    n = opts.s3_events if standin is None else opts.s3_keepalive_events
    await _produce_events(bootstrap, prefix, workload.raw_events(settings, n, seed=100 + run))
    profile = workdir / "worker-s3.prof" if opts.profile_worker else None
    workers = Workers(base_env(prefix, workdir), workdir, opts.workers, profile)
    try:
        await workers.start()
        t0 = await workers.first_consumption()
        cpu0, own0 = workers.cpu(), cpu_seconds()
        deadline = time.monotonic() + max(180.0, n / 20)
        delivered = 0.0
        while time.monotonic() < deadline:
            delivered = await workers.metric("streamer_deliveries_total", 'destination_type="s3",outcome="delivered"')
            if delivered >= n:
                break
            # Each poll renders the worker's whole /metrics page on the worker's CPU: not often.
            await asyncio.sleep(0.5)
        t1 = time.perf_counter()
        cpu, own = workers.cpu() - cpu0, cpu_seconds() - own0
        if delivered < n:
            raise RuntimeError(f"S3: {delivered:.0f} of {n} delivered; worker log:\n{workers.procs[0].log()[-4000:]}")
        rss = max(workers.peak_rss_mb())
    finally:
        await workers.stop()
    problems = workers.problems()
    if standin is None:
        objects = await _count_objects(s3, bucket)
    else:
        objects = sum(1 for k in standin.keys if k.startswith(bucket + "/"))
    out = {"events": n, "seconds": t1 - t0, "events_per_s": n / (t1 - t0), "cpu_us_per_event": cpu / n * 1e6,
           "objects": objects, "destinations": settings.destinations, "peak_rss_mb": rss,
           "worker_problems": problems}
    if standin is not None:  # the stand-in runs in this process: its CPU, as the receiver's for REST
        out["server_cpu_us_per_event"] = own / n * 1e6
    if profile is not None:
        out["profile"] = _profile_summary(profile)
        print(out["profile"], flush=True)
    return out


async def _count_objects(endpoint: str, bucket: str) -> int:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        count, token = 0, None
        while True:
            kw = {"ContinuationToken": token} if token else {}
            page = await s3.list_objects_v2(Bucket=bucket, **kw)
            count += page.get("KeyCount", 0)
            if not page.get("IsTruncated"):
                return count
            token = page["NextContinuationToken"]


# -- results ----------------------------------------------------------------------------------

def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(path: tuple[str, str]) -> float | None:
        values = [r[path[0]][path[1]] for r in runs if path[0] in r]
        return statistics.median(values) if values else None

    m = {
        "baseline_events_per_s": med(("baseline", "events_per_s")),
        "baseline_cpu_us_per_event": med(("baseline", "cpu_us_per_event")),
        "baseline_broker_cpu_us_per_event": med(("baseline", "broker_cpu_us_per_event")),
        "pipelined_events_per_s": med(("baseline_pipelined", "events_per_s")),
        "pipelined_cpu_us_per_event": med(("baseline_pipelined", "cpu_us_per_event")),
        "pipelined_broker_cpu_us_per_event": med(("baseline_pipelined", "broker_cpu_us_per_event")),
        "floor_events_per_s": med(("floor", "events_per_s")),
        "floor_cpu_us_per_event": med(("floor", "cpu_us_per_event")),
        "floor_broker_cpu_us_per_event": med(("floor", "broker_cpu_us_per_event")),
        "rest_events_per_s": med(("rest", "events_per_s")),
        "rest_cpu_us_per_event": med(("rest", "cpu_us_per_event")),
        "rest_broker_cpu_us_per_event": med(("rest", "broker_cpu_us_per_event")),
        "rest_receiver_cpu_us_per_event": med(("rest", "receiver_cpu_us_per_event")),
        "rest_items_per_request": med(("rest", "items_per_request")),
        "rest_peak_rss_mb": med(("rest", "peak_rss_mb")),
        "latency_p50_ms": med(("latency", "p50_ms")),
        "latency_p99_ms": med(("latency", "p99_ms")),
        "latency_offered_per_s": med(("latency", "offered_per_s")),
        "latency_cpu_us_per_event": med(("latency", "cpu_us_per_event")),
        "s3_events_per_s": med(("s3", "events_per_s")),
        "s3_cpu_us_per_event": med(("s3", "cpu_us_per_event")),
        "s3_peak_rss_mb": med(("s3", "peak_rss_mb")),
        "s3_keepalive_events_per_s": med(("s3_keepalive", "events_per_s")),
        "s3_keepalive_cpu_us_per_event": med(("s3_keepalive", "cpu_us_per_event")),
        "s3_keepalive_server_cpu_us_per_event": med(("s3_keepalive", "server_cpu_us_per_event")),
    }
    ratios = [r["rest"]["events_per_s"] / r["baseline"]["events_per_s"]
              for r in runs if "rest" in r and "baseline" in r]
    m["rest_to_baseline"] = statistics.median(ratios) if ratios else None
    ratios = [r["rest"]["events_per_s"] / r["baseline_pipelined"]["events_per_s"]
              for r in runs if "rest" in r and "baseline_pipelined" in r]
    m["rest_to_pipelined"] = statistics.median(ratios) if ratios else None
    ratios = [r["floor"]["events_per_s"] / r["baseline"]["events_per_s"]
              for r in runs if "floor" in r and "baseline" in r]
    m["floor_to_baseline"] = statistics.median(ratios) if ratios else None
    return m


def report(result: dict[str, Any]) -> str:
    m, o = result["median"], result["options"]
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    lines = [
        f"pipeline benchmark: medians of {len(result['runs'])} run(s); {o['events']:,} events per throughput run "
        f"(70% summaries ~1 KB, 10% details ~20 KB, 20% user activity ~1 KB), {o['workers']} worker(s), "
        f"{result['settings']['workspaces']:,} workspaces / {result['settings']['destinations']:,} destinations",
        f"  baseline aiokafka passthrough   {f(m['baseline_events_per_s'], ',.0f'):>8} events/s   "
        f"{f(m['baseline_cpu_us_per_event'], '.0f')} µs CPU/event (broker {f(m.get('baseline_broker_cpu_us_per_event'), '.0f')})",
        f"  pipelined passthrough           {f(m['pipelined_events_per_s'], ',.0f'):>8} events/s   "
        f"{f(m['pipelined_cpu_us_per_event'], '.0f')} µs CPU/event (broker {f(m.get('pipelined_broker_cpu_us_per_event'), '.0f')})",
        f"  framework floor (no work)       {f(m.get('floor_events_per_s'), ',.0f'):>8} events/s   "
        f"{f(m.get('floor_cpu_us_per_event'), '.0f')} µs CPU/event (broker {f(m.get('floor_broker_cpu_us_per_event'), '.0f')}); "
        f"/ baseline {f(m.get('floor_to_baseline') and m['floor_to_baseline'] * 100, '.0f')}%",
        f"  REST pipeline (Datadog batches) {f(m['rest_events_per_s'], ',.0f'):>8} events/s   "
        f"{f(m['rest_cpu_us_per_event'], '.0f')} µs CPU/event (broker {f(m.get('rest_broker_cpu_us_per_event'), '.0f')}, "
        f"receiver {f(m.get('rest_receiver_cpu_us_per_event'), '.0f')}), {f(m['rest_items_per_request'], '.1f')} items/request",
        f"  pipeline / baseline             {f(m['rest_to_baseline'] and m['rest_to_baseline'] * 100, '.0f')}%"
        f"   (target ≥ 50%); / pipelined passthrough {f(m['rest_to_pipelined'] and m['rest_to_pipelined'] * 100, '.0f')}%",
        f"  end-to-end latency at {f(m['latency_offered_per_s'], ',.0f')} events/s: "
        f"p50 {f(m['latency_p50_ms'], '.0f')} ms, p99 {f(m['latency_p99_ms'], '.0f')} ms, "
        f"{f(m['latency_cpu_us_per_event'], '.0f')} µs CPU/event   (target p99 ≤ 500 ms)",
        f"  worker peak RSS (VmHWM)         {f(m['rest_peak_rss_mb'], '.0f')} MB",
        f"  S3 into moto                    {f(m['s3_events_per_s'], ',.0f'):>8} events/s   "
        f"{f(m['s3_cpu_us_per_event'], '.0f')} µs CPU/event (worker), peak RSS {f(m['s3_peak_rss_mb'], '.0f')} MB",
        f"  S3 into a keep-alive stand-in   {f(m.get('s3_keepalive_events_per_s'), ',.0f'):>8} events/s   "
        f"{f(m.get('s3_keepalive_cpu_us_per_event'), '.0f')} µs CPU/event (worker; stand-in "
        f"{f(m.get('s3_keepalive_server_cpu_us_per_event'), '.0f')})   (target ≤ 400 µs)",
    ]
    return "\n".join(lines)
