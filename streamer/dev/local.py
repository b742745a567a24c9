"""Install, start and stop a single-node KRaft Kafka broker and a moto S3 server on loopback.

Kafka is resolved as plain jars from Maven Central with Maven (the only Kafka source this
project's machines can reach), cached under `.cache/`, and run with `java -cp`. Each service
keeps its pid file and log in its state folder, so `down` and `status` work from another
shell, and a failed start prints the log tail instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

KAFKA_VERSION = "4.1.1"


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) still answers kill(0).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    name: str
    state_dir: Path
    port: int

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    @property
    def port_file(self) -> Path:
        return self.state_dir / f"{self.name}.port"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _spawn(self, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        self.pid_file.write_text(str(proc.pid))
        self.port_file.write_text(str(self.port))
        return proc

    def _wait(self, proc: subprocess.Popen, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with code {proc.returncode} while starting;"
                                   f" last lines of {self.log_file}:\n{_tail(self.log_file)}")
            if ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServiceError(f"{self.name} did not become ready on 127.0.0.1:{self.port} within "
                           f"{timeout:.0f}s; last lines of {self.log_file}:\n{_tail(self.log_file)}")

    def stop(self, timeout: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def cache_root() -> Path:
    return Path(os.environ.get("STREAMER_CACHE_DIR", Path.cwd() / ".cache"))


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """Resolve the broker's jars once with Maven; later calls work offline from the cache."""
    libs = cache_root() / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise ServiceError("Maven (mvn) is needed once to fetch Kafka jars from Maven Central")
    libs.mkdir(parents=True, exist_ok=True)
    pom = resources.files("streamer.dev") / "pom.xml"
    with resources.as_file(pom) as pom_path:
        cmd = ["mvn", "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
               f"-DoutputDirectory={libs}", "-DincludeScope=runtime", f"-Dkafka.version={version}"]
        print(f"fetching Apache Kafka {version} jars from Maven Central ...", file=sys.stderr)
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ServiceError(f"maven could not resolve Kafka {version}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    marker.write_text(version)
    return libs


class Kafka(Service):
    def __init__(self, state_dir: Path, port: int = 9092, version: str = KAFKA_VERSION):
        super().__init__("kafka", state_dir, port)
        self.version = version

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self, controller_port: int) -> Path:
        data = self.state_dir / "data"
        props = self.state_dir / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "num.partitions=1",
            # The spec allows 40 MB log messages; topics raise their own limit to 50 MiB.
            "message.max.bytes=52428800",
            "replica.fetch.max.bytes=52428800",
            "log.cleaner.backoff.ms=5000",
        ]) + "\n")
        return props

    def start(self, timeout: float = 90.0) -> None:
        if self.pid() is not None:
            print(f"kafka already running (pid {self.pid()}) on {self.bootstrap}")
            return
        if _port_open(self.port):
            raise ServiceError(f"port {self.port} is taken by another process")
        libs = kafka_libs(self.version)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        controller_port = free_port()
        props = self._properties(controller_port)
        cp = f"{libs}/*"
        java = shutil.which("java") or "java"
        if not (self.state_dir / "data" / "meta.properties").exists():
            cluster_id = uuid.uuid4().bytes
            import base64
            cid = base64.urlsafe_b64encode(cluster_id).decode().rstrip("=")
            res = subprocess.run([java, "-cp", cp, "kafka.tools.StorageTool", "format", f"--cluster-id={cid}",
                                  "-c", str(props)], capture_output=True, text=True)
            if res.returncode != 0:
                raise ServiceError(f"formatting KRaft storage failed:\n{res.stdout}{res.stderr}")
        with resources.as_file(resources.files("streamer.dev") / "log4j2.properties") as log_cfg:
            log4j = str(log_cfg)
        heap = os.environ.get("STREAMER_KAFKA_HEAP", "768m")
        argv = [java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", cp, "kafka.Kafka", str(props)]
        proc = self._spawn(argv)
        self._wait(proc, self._answers_metadata, timeout)

    def _answers_metadata(self) -> bool:
        if not _port_open(self.port):
            return False
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        async def probe() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.list_topics()
                return True
            except Exception:
                return False
            finally:
                await admin.close()

        return asyncio.run(probe())


class MotoS3(Service):
    def __init__(self, state_dir: Path, port: int = 5000):
        super().__init__("s3", state_dir, port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if self.pid() is not None:
            print(f"s3 already running (pid {self.pid()}) at {self.endpoint}")
            return
        if _port_open(self.port):
            raise ServiceError(f"port {self.port} is taken by another process")
        env = dict(os.environ)
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        proc = self._spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], env)
        self._wait(proc, self._answers, timeout)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1) as r:
                return r.status == 200
        except Exception:
            return False


def state_dir() -> Path:
    return Path(os.environ.get("STREAMER_DEV_DIR", Path.cwd() / ".local" / "dev"))


def services(kafka_port: int, s3_port: int, root: Path | None = None) -> tuple[Kafka, MotoS3]:
    root = root or state_dir()
    return Kafka(root / "kafka", kafka_port), MotoS3(root / "s3", s3_port)


def _saved_port(svc: Service, default: int) -> int:
    try:
        return int(svc.port_file.read_text())
    except (FileNotFoundError, ValueError):
        return default


def up(kafka: Kafka, s3: MotoS3) -> int:
    """Start both (or find them running) and say where they listen; 1 with the reason if not."""
    try:
        kafka.start()
        s3.start()
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"kafka listening on {kafka.bootstrap} (log {kafka.log_file})")
    print(f"s3    listening on {s3.endpoint} (log {s3.log_file})")
    return 0


def dev_command(action: str, kafka_port: int, s3_port: int) -> int:
    kafka, s3 = services(kafka_port, s3_port)
    if action == "up":
        return up(kafka, s3)
    if action == "down":
        for svc in (s3, kafka):
            print(f"{svc.name}: {'stopped' if svc.stop() else 'was not running'}")
        return 0
    if action == "status":
        running = True
        for svc, default in ((kafka, kafka_port), (s3, s3_port)):
            pid = svc.pid()
            port = _saved_port(svc, default)
            running &= pid is not None
            print(f"{svc.name}: {'running pid %d on 127.0.0.1:%d' % (pid, port) if pid else 'stopped'}")
        return 0 if running else 3
    raise ValueError(action)
