"""Session-wide real services: a Kafka broker (KRaft, from Maven jars) and moto S3 on loopback.

If STREAMER_TEST_BOOTSTRAP / STREAMER_TEST_S3 point at running services they are used as
they are; otherwise the harness starts its own on free ports and stops them at the end.
Every test gets its own topic prefix and app id, so tests never read each other's records.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from streamer.dev.local import Azurite, FakeGcs, Kafka, MotoS3, free_port
from streamer.topics_admin import apply_topics

from tests.support import WorkerProcess, worker_env

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples"


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    if os.environ.get("STREAMER_TEST_BOOTSTRAP"):
        yield os.environ["STREAMER_TEST_BOOTSTRAP"]
        return
    k = Kafka(tmp_path_factory.mktemp("kafka"), free_port())
    k.start()
    try:
        yield k.bootstrap
    finally:
        k.stop(timeout=3)  # a throwaway broker: no need to wait out its controlled shutdown


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    if os.environ.get("STREAMER_TEST_S3"):
        yield os.environ["STREAMER_TEST_S3"]
        return
    m = MotoS3(tmp_path_factory.mktemp("s3"), free_port())
    m.start()
    try:
        yield m.endpoint
    finally:
        m.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """Azurite's Blob service (installed from npm into .cache/ on first use), for the
    tests that ask for it; STREAMER_TEST_AZURITE=<account url> uses a running one."""
    if os.environ.get("STREAMER_TEST_AZURITE"):
        yield os.environ["STREAMER_TEST_AZURITE"]
        return
    a = Azurite(tmp_path_factory.mktemp("azurite"), free_port())
    a.start()
    try:
        yield a.account_url
    finally:
        a.stop()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """fake-gcs-server, for the tests that ask for it; STREAMER_TEST_GCS=<url> uses a running one."""
    if os.environ.get("STREAMER_TEST_GCS"):
        yield os.environ["STREAMER_TEST_GCS"]
        return
    g = FakeGcs(tmp_path_factory.mktemp("gcs"), free_port())
    g.start()
    try:
        yield g.endpoint
    finally:
        g.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def topics(kafka, prefix):
    """All of the project's topics, created under this test's own prefix."""
    report = await apply_topics(kafka, prefix)
    assert report.ok, report.drift
    return prefix


@pytest.fixture
def env(kafka, s3, topics, tmp_path):
    return worker_env(kafka, s3, topics, tmp_path)


@pytest.fixture
def worker_factory(env, tmp_path):
    started: list[WorkerProcess] = []

    def start(extra: dict | None = None, name: str | None = None) -> WorkerProcess:
        w = WorkerProcess({**env, **(extra or {})}, tmp_path / (name or f"worker{len(started)}"))
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def samples() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(SAMPLES.glob("*.json"))}


@pytest.fixture
async def providers():
    from tests.providers import ProviderServer

    server = ProviderServer()
    await server.start()
    yield server
    await server.stop()
