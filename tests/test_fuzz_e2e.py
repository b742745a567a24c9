"""Fuzz the control plane and the raw topics through the real broker and a real worker (issue 17).

A seeded generator writes 10,000 settings commands (malformed, unsigned, wrongly signed,
replayed, stale, oversized, hostile destinations, plaintext or moved secrets, and valid
ones) to the commands topic, and raw records (broken JSON, huge integers, odd ids, valid
events) to the raw topics. Then:

  * every command record gets exactly one result (matched by the record's offset);
  * no command the generator made bad is accepted;
  * the worker logged no exception and never retried a batch;
  * every raw record was consumed (the worker's own counters);
  * the worker's settings equal the table's.

The SSRF guard is on (no private destinations); every URL is an IP literal or localhost, so
no lookup leaves the machine, and no valid configuration selects any event, so nothing is
delivered anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import time
from datetime import datetime, timedelta, timezone

import orjson
from aiokafka import AIOKafkaProducer

from streamer import topics as T
from streamer.admin import build_command, encrypt_secrets, read_settings
from streamer.settings import signing
from tests.support import ENCRYPTION_KEY, SIGNING_KEY, consume, job_event, activity_event

COMMANDS = 10_000
RAW_RECORDS = 3_000
SIGN = base64.b64decode(SIGNING_KEY)
ENC = {"test-e1": base64.b64decode(ENCRYPTION_KEY)}
WORKSPACES = [str(900 + i) for i in range(30)]
PARTNERS = ["fa", "fb", "fc"]
HOSTILE_URLS = [
    "https://127.0.0.1/x", "https://10.0.0.1/", "https://172.16.5.4/", "https://192.168.0.1/",
    "https://169.254.169.254/latest/meta-data", "https://100.100.100.200/", "https://100.64.0.1/",
    "https://[::1]/", "https://[::ffff:169.254.169.254]/", "https://[::ffff:10.0.0.1]/", "https://[2002:a9fe:a9fe::]/",
    "https://[fe80::1]/", "https://[fc00::1]/", "https://0.0.0.0/", "https://localhost/", "https://224.0.0.1/",
    "https://192.0.2.1/", "https://198.18.0.1/", "https://255.255.255.255/", "http://93.184.215.14/",
    "https://user:pw@93.184.215.14/", "https://:pw@93.184.215.14/", "file:///etc/passwd", "gopher://93.184.215.14/",
    "https:///nohost", "https://93.184.215.14:99999/", "https://[::1/", "javascript:alert(1)",
    "https://93.184.215.14/" + "p" * 3000,
]
PUBLIC_URL = "https://93.184.215.14/logs"


def now() -> datetime:
    return datetime.now(timezone.utc)


class Generator:
    """Seeded; each record comes with whether it is bad (must be rejected)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.valid: list[dict] = []
        self.n = 0

    def cid(self) -> str:
        self.n += 1
        return f"fz-{self.n:06d}-{self.rng.getrandbits(32):08x}"

    def sign(self, body: dict, key_id: str = "test-k1", key: bytes = SIGN) -> dict:
        return signing.signed(body, key_id, key)

    def body(self, kind: str, issued: datetime | None = None, **fields) -> dict:
        return {"type": kind, "command_id": self.cid(), "issued_at": (issued or now()).isoformat(),
                "actor": "fuzz", **fields}

    def config(self, scope: str, url: str = PUBLIC_URL, **over) -> dict:
        r = self.rng
        dest = r.choice([
            {"type": "http", "provider": r.choice(["generic", "sumo"]), "url": url},
            {"type": "http", "provider": "datadog", "url": url, "api_key": f"dd-{r.getrandbits(40):x}"},
            {"type": "http", "provider": "splunk", "url": url, "token": f"hec-{r.getrandbits(40):x}"},
            {"type": "http", "provider": "generic", "url": url, "secret_headers": {"Authorization": "Bearer t"},
             "headers": {"X-Env": "fuzz"}},
            {"type": "s3", "bucket": f"bkt-{r.randrange(100)}", "prefix": "audit/"},
        ])
        # Nothing is ever selected, so the raw records are parsed and skipped, never delivered.
        config = {"enabled": r.random() < 0.8, "jobs": "off", "user_activity": False, "destination": dest}
        if r.random() < 0.2:
            config["template"] = '{"m": {{log_message}}}'
        config.update(over)
        return encrypt_secrets(config, ENC, scope)

    def valid_command(self) -> dict:
        r = self.rng
        ws, partner = r.choice(WORKSPACES), r.choice(PARTNERS)
        kind = r.choices(["register_workspace", "unregister_workspace", "put_workspace_config",
                          "delete_workspace_config", "put_partner_config", "delete_partner_config"],
                         weights=[5, 1, 4, 1, 1, 1])[0]
        fields = {"register_workspace": {"workspace_id": ws, "partner_id": partner, "role": "customer"},
                  "unregister_workspace": {"workspace_id": ws},
                  "put_workspace_config": {"workspace_id": ws, "config": self.config(f"ws/{ws}")},
                  "delete_workspace_config": {"workspace_id": ws},
                  "put_partner_config": {"partner_id": partner, "config": self.config(f"partner/{partner}")},
                  "delete_partner_config": {"partner_id": partner}}[kind]
        body = self.sign(self.body(kind, **fields))
        self.valid.append(body)
        return body

    def bad(self) -> bytes:
        """One record the worker must reject, of a random kind."""
        r = self.rng
        ws = r.choice(WORKSPACES)
        choice = r.randrange(20)
        if choice == 0:  # not JSON, or not an object
            return r.choice([b"", b"{", b"\xff\xfe", b"null", b"[]", b'"x"', b"1e999", b"{" * 2000,
                             bytes(r.getrandbits(8) for _ in range(r.randrange(1, 200)))])
        if choice == 1:  # the example and its relatives, unsigned
            return orjson.dumps({"type": "put_workspace_config", "command_id": self.cid(),
                                 "config": r.choice(["x", ["x"], 5, None, {"destination": "x"}])})
        if choice == 2:  # signed, but the config is not a configuration
            return orjson.dumps(self.sign(self.body("put_workspace_config", workspace_id=ws, config=r.choice(
                ["x", ["x"], 5, None, {"destination": "x"}, {"destination": {"type": "ftp"}},
                 {"destination": {"type": "http", "url": ["x"]}}, {"destination": {"type": "http", "url": 7}}]))))
        if choice == 3:  # signed with a key nobody has, or an unknown key id
            return orjson.dumps(self.sign(self.body("register_workspace", workspace_id=ws, partner_id="fa",
                                                    role="customer"), r.choice(["test-k1", "other"]), b"k" * 32))
        if choice == 4:  # tampered after signing
            body = self.sign(self.body("register_workspace", workspace_id=ws, partner_id="fa", role="customer"))
            body[r.choice(["workspace_id", "partner_id", "role", "actor"])] = "mallory"
            return orjson.dumps(body)
        if choice == 5:  # no signature, or a malformed one
            body = self.sign(self.body("unregister_workspace", workspace_id=ws))
            if r.random() < 0.5:
                del body["signature"]
            else:
                body["signature"] = r.choice(["", "00", 5, None, ["x"], "z" * 64])
            return orjson.dumps(body)
        if choice == 6 and self.valid:  # replayed: a command already processed, byte for byte
            return orjson.dumps(r.choice(self.valid))
        if choice == 7:  # stale or from the future
            return orjson.dumps(self.sign(self.body("register_workspace", issued=now() + timedelta(
                minutes=r.choice([-60, -10, 10, 60])), workspace_id=ws, partner_id="fa", role="customer")))
        if choice == 8:  # hostile REST URL
            return orjson.dumps(self.sign(self.body("put_workspace_config", workspace_id=ws, config=self.config(
                f"ws/{ws}", destination={"type": "http", "provider": "generic", "url": r.choice(HOSTILE_URLS)}))))
        if choice == 9:  # hostile S3 endpoint
            return orjson.dumps(self.sign(self.body("put_partner_config", partner_id="fa", config=self.config(
                "partner/fa", destination={"type": "s3", "bucket": "bkt-x", "endpoint_url": r.choice(HOSTILE_URLS)}))))
        if choice == 10:  # oversized parts
            over = r.choice([{"template": '{"m": {{log_message}}, "p": "' + "x" * 70_000 + '"}'},
                             {"destination": {"type": "http", "url": PUBLIC_URL,
                                              "headers": {f"X-{i}": "v" for i in range(51)}}},
                             {"destination": {"type": "http", "url": PUBLIC_URL, "headers": {"X-Big": "v" * 9000}}},
                             {"destination": {"type": "http", "url": PUBLIC_URL, "ddtags": "t" * 5000}}])
            return orjson.dumps(self.sign(self.body("put_workspace_config", workspace_id=ws,
                                                    config=self.config(f"ws/{ws}", **over))))
        if choice == 11:  # oversized fields, and now and then a whole command over 1 MiB
            if r.random() < 0.05:  # (signed, so only the size refuses it)
                return orjson.dumps(self.sign(self.body("register_workspace", workspace_id=ws, partner_id="fa",
                                                        role="customer", external_id="x" * (1024 * 1024))))
            over = r.choice([{"external_id": "x" * 2000}, {"actor": "a" * 300},
                             {"workspace_id": "w" * 65}, {"command_id": "c" * 129}])
            return orjson.dumps(self.sign({**self.body("register_workspace", workspace_id=ws, partner_id="fa",
                                                       role="customer"), **over}))
        if choice == 12:  # plaintext secrets, or secrets in plain headers
            dest = r.choice([{"type": "http", "provider": "datadog", "url": PUBLIC_URL, "api_key": {"enc": "plain"}},
                             {"type": "http", "url": PUBLIC_URL, "secret_headers": {"Authorization": "Bearer x"}},
                             {"type": "http", "url": PUBLIC_URL, "headers": {"Authorization": "Bearer x"}},
                             {"type": "http", "url": PUBLIC_URL, "headers": {"cookie": "s=1"}},
                             {"type": "s3", "bucket": "bkt-x", "access_key_id": "AK", "secret_access_key": "plain"}])
            config = {"jobs": "off", "user_activity": False, "destination": dest}
            return orjson.dumps(self.sign(self.body("put_workspace_config", workspace_id=ws, config=config)))
        if choice == 13:  # an envelope moved from another workspace, or another field
            other = r.choice([w for w in WORKSPACES if w != ws])
            config = self.config(f"ws/{other}", destination={"type": "http", "provider": "datadog", "url": PUBLIC_URL,
                                                             "api_key": "dd-moved"})
            return orjson.dumps(self.sign(self.body("put_workspace_config", workspace_id=ws, config=config)))
        if choice == 14:  # header injection and bad header names
            headers = r.choice([{"X-A": "v\r\nX-Injected: 1"}, {"Bad Name": "v"}, {"X-A\n": "v"}, {"": "v"}])
            return orjson.dumps(self.sign(self.body("put_workspace_config", workspace_id=ws, config=self.config(
                f"ws/{ws}", destination={"type": "http", "url": PUBLIC_URL, "headers": headers}))))
        if choice == 15:  # unsafe S3 prefixes and bucket names
            dest = r.choice([{"type": "s3", "bucket": "bkt-x", "prefix": "../up"}, {"type": "s3", "bucket": "bkt-x",
                                                                                    "prefix": "a/../../b"},
                             {"type": "s3", "bucket": "Bad_Bucket"}, {"type": "s3", "bucket": "bkt-x", "prefix": "/abs"}])
            return orjson.dumps(self.sign(self.body("put_workspace_config", workspace_id=ws, config=self.config(
                f"ws/{ws}", destination=dest))))
        if choice == 16:  # wrong types and unknown fields everywhere else
            body = self.body("register_workspace", workspace_id=ws, partner_id="fa", role="customer")
            key, value = r.choice([("workspace_id", ["x"]), ("workspace_id", "a/b"), ("role", "root"),
                                   ("issued_at", "yesterday"), ("issued_at", "2026-01-01T00:00:00"),
                                   ("command_id", "x"), ("command_id", 5), ("extra", 1), ("type", "drop_tables"),
                                   ("partner_id", "p" * 65), ("actor", "")])
            body[key] = value
            return orjson.dumps(self.sign(body))
        if choice == 17:  # a replay command without any filter
            return orjson.dumps(self.sign(self.body("replay_dead_letters")))
        if choice == 18:  # deep nesting and huge numbers inside a signed command
            body = self.body("register_workspace", workspace_id=ws, partner_id="fa", role="customer")
            raw = orjson.dumps(self.sign(body))
            return raw[:-1] + r.choice([b',"x":' + b"[" * 300 + b"]" * 300 + b"}", b',"x":1208925819614629174706176}'])
        # a v1 envelope (not bound to any scope)
        config = self.config(f"ws/{ws}", destination={"type": "http", "provider": "datadog", "url": PUBLIC_URL,
                                                      "api_key": {"enc": "v1:test-e1:" + "A" * 60}})
        return orjson.dumps(self.sign(self.body("put_workspace_config", workspace_id=ws, config=config)))

    def commands(self, n: int) -> list[tuple[bytes, bool]]:
        out = []
        for _ in range(n):
            if self.rng.random() < 0.1:
                out.append((orjson.dumps(self.valid_command()), False))
            else:
                out.append((self.bad(), True))
        return out

    def raw_records(self, n: int) -> list[tuple[str, bytes | None, bytes | None]]:
        r = self.rng
        out = []
        for i in range(n):
            ws = r.choice(WORKSPACES + ["1", "x/../y", ""])
            kind = r.choice([T.JOBS_SUMMARY, T.JOBS_DETAILS, T.USER_ACTIVITY])
            if kind == T.USER_ACTIVITY:
                event = activity_event(ws or "1", r.choice([f"ua-{i}", "a/../b", "x\ny", "é"]))
            else:
                event = job_event(ws or "1", r.choice([f"j-{i}", i, 2**63, "j/../k", "x" * 201, "j\x00"]))
                if kind == T.JOBS_DETAILS:
                    event["lines"] = r.choice([[{"recipe_line_number": 0}], [{"recipe_line_number": -1}], "x", []])
            value = orjson.dumps(event)
            mutation = r.randrange(8)
            if mutation == 0:
                value = value[: r.randrange(len(value))]
            elif mutation == 1:
                value = value[:-1] + b',"big":' + r.choice([b"1208925819614629174706176", b"-99999999999999999999",
                                                            b"1e400", b"NaN", b"18446744073709551616"]) + b"}"
            elif mutation == 2:
                value = value[:-1] + b',"id":1208925819614629174706176}'
            elif mutation == 3:
                value = r.choice([None, b"", b"[]", b"\xff", b"{" * 5000, b'{"a":' * 100 + b"1" + b"}" * 100])
            key = ws.encode() if r.random() < 0.9 else r.choice([None, b"other", b"\xff"])
            if key is None and value is None:
                key = b"1"  # Kafka needs one of the two
            out.append((kind, key, value))
        return out


async def _produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes | None]]) -> list[int]:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4 * 1024 * 1024)
    await p.start()
    try:
        futures = [await p.send(topic, value=value, key=key) for topic, key, value in records]
        return [md.offset for md in await asyncio.gather(*futures)]
    finally:
        await p.stop()


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def test_10000_fuzzed_commands_and_raw_records_are_each_answered_and_none_breaks_the_worker(
        env, worker_factory, kafka, prefix):
    started = time.monotonic()
    # Faust's PRODUCER_LINGER=0 for this worker: commands are handled one after another, each
    # waiting for its own produce acks, so the 5 ms producer linger (tuned for routing
    # throughput) is most of what a command costs: measured on an idle machine, 10,000
    # commands take 18 s without it and 87 s with it. How commands are handled is unchanged.
    w = worker_factory({"STREAMER_ALLOW_PRIVATE_DESTINATIONS": "false", "PRODUCER_LINGER": "0"})
    gen = Generator(17)
    commands = gen.commands(COMMANDS)
    raw = gen.raw_records(RAW_RECORDS)
    w.wait_ready()
    t0 = time.monotonic()
    offsets = await _produce(kafka, [(prefix + T.SETTINGS_COMMANDS, None, c) for c, _bad in commands])
    await _produce(kafka, [(prefix + topic, key, value) for topic, key, value in raw])
    assert offsets == list(range(COMMANDS))

    # About a minute on an idle 2-core machine; generous, because other test runs share it.
    results = await consume(kafka, prefix + T.SETTINGS_RESULTS, COMMANDS, timeout=300)
    elapsed = time.monotonic() - t0
    answers: dict[int, list[dict]] = {}
    for m in results:
        r = orjson.loads(m.value)
        answers.setdefault(r["offset"], []).append(r)
    missing = [o for o in range(COMMANDS) if o not in answers]
    assert not missing, f"{len(missing)} commands unanswered, first {missing[:5]}; log tail:\n{w.log()[-3000:]}"
    assert all(len(a) == 1 for a in answers.values()), [a for a in answers.values() if len(a) > 1][:3]
    accepted_bad = [(o, commands[o][0][:200], answers[o][0]) for o, (_c, bad) in enumerate(commands)
                    if bad and answers[o][0]["status"] != "rejected"]
    assert not accepted_bad, accepted_bad[:5]
    statuses = [answers[o][0]["status"] for o in range(COMMANDS)]
    valid_accepted = sum(1 for o, (_c, bad) in enumerate(commands) if not bad and statuses[o] != "rejected")
    assert valid_accepted > 300  # the valid commands really did change the settings

    # Every raw record consumed (routed, skipped or rejected), and no exception anywhere.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        consumed = _metric(w.get("/metrics")[1].decode(), "streamer_events_consumed_total")
        if consumed >= RAW_RECORDS:
            break
        await asyncio.sleep(0.5)
    assert consumed == RAW_RECORDS, consumed
    log = w.log()
    for sign in ("Traceback", "could not be processed", "failed; retrying", "Exception"):
        assert sign not in log, (sign, log[log.find(sign) - 2000: log.find(sign) + 2000])
    table = await read_settings(kafka, prefix)
    assert orjson.loads(w.get("/settings")[1])["digest"] == table.digest()
    reasons = sorted({re.sub(r"[0-9a-f]{6,}|\d+", "#", a[0]["reason"] or "")[:60] for a in answers.values()})
    print(f"\nfuzz: {COMMANDS} commands ({sum(b for _c, b in commands)} bad, {valid_accepted} valid accepted) and "
          f"{RAW_RECORDS} raw records answered in {elapsed:.1f}s (test {time.monotonic() - started:.1f}s); "
          f"{len(reasons)} distinct rejection reasons")
