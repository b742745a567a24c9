#!/usr/bin/env bash
# Build the streamer image and run it for real on this machine, with podman instead of Docker.
#
#   bash scripts/container-smoke.sh          # exit 0: every check passed; 1: a check failed;
#                                            # 2: a prerequisite is missing
#
# No public image registry is reachable here, so the base image is made locally: Debian
# bookworm with python3.11, by mmdebstrap, loaded with `podman import` (cached under a tag
# that is the hash of its recipe, so it is made once). The image is then built from the
# project's Dockerfile with BASE_IMAGE pointing at that base (podman's layer cache makes a
# rebuild without changes take seconds). pip inside the build needs this machine's pip
# configuration and CA bundle; they are passed as build secrets, never baked in.
#
# Then, all on loopback with host networking: a Kafka broker and moto S3 from the project's
# own `streamer dev up` (state in a temporary folder, free ports); in containers of the
# image: the log receiver of streamer/dev/receiver.py (as docker-compose.yml runs it),
# `streamer topics apply`, two workers (read-only root filesystem, the image's non-root
# uid, no capabilities, distinct web ports) and the signed settings CLI (an S3 partner
# destination and a Datadog-style REST workspace destination, as `streamer demo` sets
# up); then the sample events. The checks: exactly the expected events arrived at each
# destination, writes to the root filesystem fail, the workers run as a uid other than 0,
# a worker stops cleanly on SIGTERM, and one stopped while still starting exits at once.
# It reports the image size and each worker's start-up time (podman run to the first 200
# from /ready).
#
# Everything started here (containers, broker, S3, receiver) is removed on exit, also on
# failure or Ctrl-C; the temporary folder with the logs is kept only when a check failed.
#
# Needs: root (rootful podman, mmdebstrap in root mode), podman with runc, mmdebstrap,
# curl, Java 17 and Maven (the broker, via .venv), and a reachable Debian mirror and PyPI
# for the first build. Environment knobs:
#   STREAMER_SMOKE_IMAGE   image tag to build and run (default localhost/streamer:smoke)
#   STREAMER_SAMPLES_DIR   the sample events (default ../shared/samples)
#   STREAMER_DEBIAN_MIRROR Debian mirror for mmdebstrap (default http://deb.debian.org)
#   STREAMER_SMOKE_TIMEOUT seconds to wait for /ready and for the deliveries (default 120)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

IMAGE=${STREAMER_SMOKE_IMAGE:-localhost/streamer:smoke}
SAMPLES=$(realpath -m "${STREAMER_SAMPLES_DIR:-$ROOT/../shared/samples}")
MIRROR=${STREAMER_DEBIAN_MIRROR:-http://deb.debian.org}
WAIT_S=${STREAMER_SMOKE_TIMEOUT:-120}
# The image's user (Dockerfile: USER 10001:10001); the data folder must belong to it.
APP_UID=10001

# podman as it works on this machine: runc with cgroupfs (no systemd), host networking,
# and explicit ulimits, which podman needs here.
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
NET=(--network host --ulimit nofile=10000:10000 --ulimit nproc=10000:10000)
# The same restrictions as docker-compose.yml and the Kubernetes pods. No --user: the
# image's own USER is what is being checked.
HARDEN=(--read-only --cap-drop ALL --security-opt no-new-privileges)

say() { printf '%s container-smoke: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }
need() {
  command -v "$1" > /dev/null || { say "missing prerequisite: $1 ($2)" >&2; exit 2; }
}

need podman "apt-get install podman"
need runc "apt-get install runc"
need mmdebstrap "apt-get install mmdebstrap"
need curl "apt-get install curl"
[[ $(id -u) == 0 ]] || { say "must run as root (rootful podman, mmdebstrap root mode)" >&2; exit 2; }
compgen -G "$SAMPLES/*.json" > /dev/null || { say "no sample events in $SAMPLES" >&2; exit 2; }

bash scripts/dev.sh setup
PY=$ROOT/.venv/bin/python

RUN_ID=$(date -u +%Y%m%d%H%M%S)-$$
LABEL=streamer-smoke=$RUN_ID
WORK=$(mktemp -d "${TMPDIR:-/tmp}/streamer-smoke.XXXXXX")
export STREAMER_DEV_DIR=$WORK/dev   # `streamer dev up/down` keep their pid files here
SERVICES_UP=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  local ids
  ids=$("${PODMAN[@]}" ps -a -q --filter "label=$LABEL")
  if [[ -n $ids ]]; then
    if (( rc != 0 )); then
      for id in $ids; do
        echo "--- podman logs $("${PODMAN[@]}" inspect --format '{{.Name}}' "$id") (last 40 lines)"
        "${PODMAN[@]}" logs --tail 40 "$id" 2>&1
      done
    fi
    # shellcheck disable=SC2086  # one id per word
    timeout 60 "${PODMAN[@]}" rm -f -t 10 $ids > /dev/null
  fi
  if [[ -n $SERVICES_UP ]]; then
    timeout 60 "$ROOT/.venv/bin/streamer" dev down > /dev/null
  fi
  if (( rc == 0 )); then
    rm -rf "$WORK"
  else
    say "logs kept in $WORK" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$PY" -c 'from streamer.dev.local import free_port; print(free_port())'; }
now_ms() { date +%s%3N; }

# ------------------------------------------------------------------ base image (cached)
# The recipe is hashed into the tag, so changing a package or an option makes a new base
# and an unchanged recipe reuses the one already loaded (remove the tag to pick up newer
# Debian packages). Only the essential set plus what the Dockerfile uses: no apt, since
# nothing installs packages at build time.
MM_ARGS=(
  --variant=essential
  # merged /usr set up by mmdebstrap itself; otherwise apt picks usrmerge, which pulls perl.
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # python3.11-venv: `python3 -m venv` in the build stage; passwd: useradd/groupadd.
  --include=python3.11,python3.11-venv,ca-certificates,passwd
  # Documentation is of no use in the image; the copyright files stay.
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  bookworm
)
MM_SOURCES=(
  "deb $MIRROR/debian bookworm main"
  "deb $MIRROR/debian bookworm-updates main"
  "deb $MIRROR/debian-security bookworm-security main"
)
IMPORT_CHANGES=('ENV LANG=C.UTF-8' 'CMD ["python3"]')
BASE_HASH=$(printf '%s\n' "${MM_ARGS[@]}" "${MM_SOURCES[@]}" "${IMPORT_CHANGES[@]}" | sha256sum | cut -c1-16)
BASE_IMAGE=localhost/streamer-base:bookworm-py3.11-$BASE_HASH

if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  say "base image $BASE_IMAGE: cached"
else
  say "base image $BASE_IMAGE: mmdebstrap bookworm + python3.11 (log $WORK/mmdebstrap.log)"
  timeout 1200 mmdebstrap "${MM_ARGS[@]}" "$WORK/base.tar" "${MM_SOURCES[@]}" > "$WORK/mmdebstrap.log" 2>&1 \
    || { tail -20 "$WORK/mmdebstrap.log"; die "mmdebstrap failed"; }
  changes=()
  for c in "${IMPORT_CHANGES[@]}"; do changes+=(--change "$c"); done
  timeout 600 "${PODMAN[@]}" import -q "${changes[@]}" "$WORK/base.tar" "$BASE_IMAGE" > /dev/null
  rm -f "$WORK/base.tar"
fi

# ------------------------------------------------------------------ the image
# pip's configuration as pip sees it here (files and PIP_* variables), as one pip.conf
# for the build, and the CA bundle pip trusts here. Local paths (find-links to a folder
# on this machine) mean nothing inside the build and are left out; `cert` is replaced by
# the mounted bundle (the Dockerfile sets PIP_CERT to it).
"$PY" - "$WORK/pip.conf" "$WORK/pip-ca.path" <<'EOF'
import ast
import configparser
import os
import subprocess
import sys

listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, check=True).stdout
files, env = {}, {}
for line in listing.splitlines():
    key, sep, value = line.partition("=")
    if not sep:
        continue
    section, _, name = key.rpartition(".")
    target = env if section == ":env:" else files
    target[("global" if section == ":env:" else section, name)] = ast.literal_eval(value)
settings = {**files, **env}  # PIP_* variables win over files, as in pip
ca = next((v for (s, n), v in settings.items() if n == "cert"), None)
ca = ca or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
if not ca:
    from pip._vendor import certifi
    ca = certifi.where()
out = configparser.ConfigParser(interpolation=None)
for (section, name), value in settings.items():
    if name == "cert" or (name == "find-links" and "://" not in value):
        continue
    if not out.has_section(section):
        out.add_section(section)
    out.set(section, name, value)
with open(sys.argv[1], "w") as f:
    out.write(f)
with open(sys.argv[2], "w") as f:
    f.write(os.path.realpath(ca))
EOF
PIP_CA=$(cat "$WORK/pip-ca.path")
say "image $IMAGE from Dockerfile, BASE_IMAGE=$BASE_IMAGE (log $WORK/build.log)"
previous=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2> /dev/null || true)
build_start=$(now_ms)
timeout 1800 "${PODMAN[@]}" build "${NET[@]}" --layers \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --secret "id=pip_conf,src=$WORK/pip.conf" --secret "id=pip_ca,src=$PIP_CA" \
    -t "$IMAGE" -f Dockerfile . > "$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log"; die "podman build failed"; }
build_s=$(( ($(now_ms) - build_start) / 1000 ))
# A changed source leaves the image the tag pointed to before (~100 MB: its own copy of
# /opt/venv) untagged; remove it and its unused layers, so reruns do not fill the disk.
# The build stage's layers stay: they are the cache of the dependency install.
if [[ -n $previous && $previous != $("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE") ]]; then
  "${PODMAN[@]}" rmi "$previous" > /dev/null 2>&1 || true
fi
# The secrets must not be in the image: look for them in every layer's file list.
if "${PODMAN[@]}" run --rm "${NET[@]}" --entrypoint sh "$IMAGE" -c \
     'test -e /run/secrets/pip.conf || test -e /run/secrets/pip-ca.pem'; then
  die "a build secret ended up in the image"
fi
size_bytes=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
# What a registry would store and a node would pull: the layers, gzip-compressed.
gz_bytes=$("${PODMAN[@]}" save --format oci-archive "$IMAGE" 2> /dev/null | gzip -6 | wc -c)
mb() { "$PY" -c "print(f'{$1 / 1e6:.0f} MB')"; }
say "image size: $(mb "$size_bytes") (gzip: $(mb "$gz_bytes")), build took ${build_s}s"

# ------------------------------------------------------------------ broker, S3, receiver
KAFKA_PORT=$(free_port)
S3_PORT=$(free_port)
RECEIVER_PORT=$(free_port)
SERVICES_UP=1
say "kafka and moto S3 (streamer dev up, state $STREAMER_DEV_DIR)"
timeout 300 "$ROOT/.venv/bin/streamer" dev up --kafka-port "$KAFKA_PORT" --s3-port "$S3_PORT"
BUCKET=audit-smoke
"$PY" -c "import asyncio, sys; from streamer.dev.harness import make_bucket; asyncio.run(make_bucket(*sys.argv[1:]))" \
  "http://127.0.0.1:$S3_PORT" "$BUCKET"

# Every container gets the same settings from a file (keys stay off the command line).
# Fresh keys for this run only.
key() { "$PY" -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())'; }
ENV_FILE=$WORK/streamer.env
(umask 077; cat > "$ENV_FILE" <<EOF
STREAMER_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
STREAMER_APP_ID=streamer-smoke
STREAMER_SIGNING_KEYS=smoke-sign:$(key)
STREAMER_ENCRYPTION_KEYS=smoke-enc:$(key)
STREAMER_ALLOW_PRIVATE_DESTINATIONS=true
STREAMER_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
STREAMER_WEB_HOST=127.0.0.1
AWS_ACCESS_KEY_ID=testing
AWS_SECRET_ACCESS_KEY=testing
AWS_DEFAULT_REGION=us-east-1
EOF
)
# A one-shot command in a container, hardened like the workers.
oneshot() {
  timeout 180 "${PODMAN[@]}" run --rm --label "$LABEL" "${NET[@]}" "${HARDEN[@]}" --env-file "$ENV_FILE" "$@"
}

# The log receiver runs from the image exactly as docker-compose.yml's log-receiver does.
RECEIVER=streamer-smoke-$RUN_ID-log-receiver
"${PODMAN[@]}" run -d --name "$RECEIVER" --label "$LABEL" "${NET[@]}" "${HARDEN[@]}" \
  --entrypoint python "$IMAGE" -m streamer.dev.receiver --host 127.0.0.1 --port "$RECEIVER_PORT" > /dev/null
deadline=$(( $(now_ms) + WAIT_S * 1000 ))
until (: > "/dev/tcp/127.0.0.1/$RECEIVER_PORT") 2> /dev/null; do
  (( $(now_ms) < deadline )) || die "the log receiver did not listen within ${WAIT_S}s"
  sleep 0.1
done

say "topics apply (in a container)"
oneshot "$IMAGE" topics apply > "$WORK/topics.log" 2>&1 || { cat "$WORK/topics.log"; die "topics apply failed"; }

# ------------------------------------------------------------------ SIGTERM while starting
# The worker is pid 1, and pid 1 gets no signal it has no handler for. The command installs
# one before anything else and Faust replaces it with its own some seconds later; SIGTERM
# sent the moment the first handler is there (seen in /proc/1/status) must end the worker
# at once with 143 (the early handler's code, not Faust's shutdown), not after the grace
# period with a SIGKILL.
data=$WORK/data-early-stop
mkdir -p "$data"
chown "$APP_UID:$APP_UID" "$data"
c=streamer-smoke-$RUN_ID-early-stop
started=$(now_ms)
"${PODMAN[@]}" run -d --name "$c" --label "$LABEL" "${NET[@]}" "${HARDEN[@]}" --env-file "$ENV_FILE" \
  -e STREAMER_APP_ID=streamer-smoke-early-stop -e "STREAMER_WEB_PORT=$(free_port)" \
  -v "$data:/var/lib/streamer" "$IMAGE" > /dev/null
until caught=$("${PODMAN[@]}" exec "$c" sh -c "sed -n 's/^SigCgt:[[:space:]]*//p' /proc/1/status" 2> /dev/null) \
    && (( 0x${caught:-0} & (1 << 14) )); do  # bit 14: signal 15, SIGTERM
  (( $(now_ms) - started < 30000 )) || die "the worker installed no SIGTERM handler within 30 s"
  sleep 0.05
done
handler_ms=$(( $(now_ms) - started ))
stop_start=$(now_ms)
timeout 60 "${PODMAN[@]}" stop -t 30 "$c" > /dev/null 2>&1
early_stop_ms=$(( $(now_ms) - stop_start ))
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$c")
[[ $code == 143 ]] && (( early_stop_ms < 10000 )) \
  || die "a worker stopped while starting took ${early_stop_ms} ms and exited $code (want 143 at once)"
say "SIGTERM handled ${handler_ms} ms after podman run; a worker stopped then exited 143 in ${early_stop_ms} ms"

# ------------------------------------------------------------------ two workers
declare -A WEB_PORT STARTUP_MS
start_worker() {
  local name=$1 port data started
  port=$(free_port)
  # The worker's only writable folder, like the pods' emptyDir; a bind mount because
  # podman's --tmpfs here ignores mode= and stays root-owned.
  data=$WORK/data-$name
  mkdir -p "$data"
  chown "$APP_UID:$APP_UID" "$data"
  started=$(now_ms)
  "${PODMAN[@]}" run -d --name "streamer-smoke-$RUN_ID-$name" --label "$LABEL" "${NET[@]}" "${HARDEN[@]}" \
    --env-file "$ENV_FILE" -e "STREAMER_WEB_PORT=$port" -v "$data:/var/lib/streamer" \
    --stop-timeout 30 "$IMAGE" > /dev/null
  local deadline=$(( started + WAIT_S * 1000 ))
  until curl -fsS -o /dev/null -m 2 "http://127.0.0.1:$port/ready" 2> /dev/null; do
    [[ $("${PODMAN[@]}" inspect --format '{{.State.Running}}' "streamer-smoke-$RUN_ID-$name") == true ]] \
      || die "$name exited before it was ready"
    (( $(now_ms) < deadline )) || die "$name not ready within ${WAIT_S}s"
    sleep 0.1
  done
  WEB_PORT[$name]=$port
  STARTUP_MS[$name]=$(( $(now_ms) - started ))
  say "$name ready on 127.0.0.1:$port after ${STARTUP_MS[$name]} ms (podman run to /ready 200)"
}
# One after the other, so each start-up time is a worker's own and not two sharing 2 cores.
start_worker worker-1
start_worker worker-2

# ------------------------------------------------------------------ hardening checks
for name in worker-1 worker-2; do
  c=streamer-smoke-$RUN_ID-$name
  # The worker process itself (pid 1), not a shell started next to it.
  uids=$("${PODMAN[@]}" exec "$c" sh -c 'grep "^Uid:" /proc/1/status')
  read -r _ ruid euid _ <<< "$uids"
  [[ $ruid != 0 && $euid != 0 ]] || die "$name runs as uid 0 ($uids)"
  for path in / /opt/venv /etc /var/lib; do
    if err=$("${PODMAN[@]}" exec "$c" sh -c "echo x > '$path/smoke-write'" 2>&1); then
      die "$name could write to $path on the root filesystem"
    fi
    [[ $err == *"Read-only file system"* ]] || die "$name: writing to $path failed, but not read-only: $err"
  done
  "${PODMAN[@]}" exec "$c" sh -c 'echo x > /var/lib/streamer/smoke-write' \
    || die "$name cannot write to its data folder"
done
say "root filesystem read-only, data folder writable, workers run as uid $ruid"

# ------------------------------------------------------------------ settings and events
mkdir -p "$WORK/config"
cat > "$WORK/config/partner-s3.json" <<EOF
{"jobs": "status", "user_activity": true,
 "destination": {"type": "s3", "bucket": "$BUCKET", "prefix": "audit",
                 "endpoint_url": "http://127.0.0.1:$S3_PORT"}}
EOF
cat > "$WORK/config/workspace-http.yaml" <<EOF
jobs: details
user_activity: true
template: '{"source": "workato", "environment": "smoke", "logEntries": {{log_message}}}'
destination:
  type: http
  provider: datadog
  url: http://127.0.0.1:$RECEIVER_PORT
  api_key: smoke-datadog-key
  ddtags: env:smoke
EOF
chmod -R a+rX "$WORK/config"
settings() {
  say "streamer settings $*"
  oneshot -v "$WORK/config:/config:ro" "$IMAGE" settings --actor container-smoke "$@" \
    > "$WORK/settings.log" 2>&1 || { cat "$WORK/settings.log"; die "streamer settings $1 was not accepted"; }
}
settings register --workspace 5234 --partner northwind-partner --role customer
settings put-partner --partner northwind-partner --file /config/partner-s3.json
settings register --workspace 78125 --partner acme-partner --role customer --external-id acme-freight-eu
settings put-workspace --workspace 78125 --file /config/workspace-http.yaml
oneshot "$IMAGE" settings get --workspace 78125 > "$WORK/settings-get.json" 2>&1
grep -q '"api_key": "\*\*\*"' "$WORK/settings-get.json" || die "the stored api_key is not shown redacted"

say "producing the sample events from $SAMPLES"
# Which events must arrive where follows from the two configurations above: workspace 5234
# (partner-wide S3, jobs=status) gets its job summaries and user activity, workspace 78125
# (REST, jobs=details) its job details and user activity.
"$PY" - "$SAMPLES" "127.0.0.1:$KAFKA_PORT" "http://127.0.0.1:$S3_PORT" "$BUCKET" "$RECEIVER" "$WAIT_S" \
  <<'EOF' || die "not every expected event was delivered (exactly once)"
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import orjson
from aiobotocore.session import get_session
from aiokafka import AIOKafkaProducer

from streamer.demo import TOPIC_OF, _kind, _workspace

samples, bootstrap, s3_endpoint, bucket, receiver, wait_s = sys.argv[1:]
events = [(f.name, orjson.loads(f.read_bytes()), f.read_bytes()) for f in sorted(Path(samples).glob("*.json"))]
want_s3 = {n: b for n, b, _ in events if _workspace(b) == "5234" and _kind(b) in ("job_summary", "user_activity")}
want_http = {n: b for n, b, _ in events if _workspace(b) == "78125" and _kind(b) in ("job_details", "user_activity")}


async def main() -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for name, body, raw in events:
            await producer.send_and_wait(TOPIC_OF[_kind(body)], raw, key=_workspace(body).encode())
    finally:
        await producer.stop()
    deadline = time.monotonic() + float(wait_s)
    s3_got, http_got = [], []
    async with get_session().create_client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        while True:
            listing = await s3.list_objects_v2(Bucket=bucket)
            s3_got = []
            for obj in listing.get("Contents", []):
                body = await (await s3.get_object(Bucket=bucket, Key=obj["Key"]))["Body"].read()
                s3_got.append((obj["Key"], orjson.loads(body)))
            # The receiver prints one JSON line per message it accepted.
            lines = subprocess.run(["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "logs", receiver],
                                   capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
            http_got = [json.loads(ln) for ln in lines if ln.startswith("{")]
            s3_missing = [n for n, b in want_s3.items() if b not in [g for _, g in s3_got]]
            http_missing = [n for n, b in want_http.items()
                            if b not in [m["message"].get("logEntries") for m in http_got
                                         if isinstance(m["message"], dict)]]
            if not s3_missing and not http_missing:
                break
            if time.monotonic() > deadline:
                print(f"not delivered within {wait_s}s: S3 {s3_missing}, REST {http_missing}", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
    for key, _ in s3_got:
        print(f"  s3://{bucket}/{key}")
    for m in http_got:
        entry = m["message"]["logEntries"]
        print(f"  POST {m['path']}: {entry.get('event') or 'job %s %s' % (entry.get('id'), entry.get('status'))}")
    unexpected = len(s3_got) - len(want_s3), len(http_got) - len(want_http)
    print(f"delivered: {len(s3_got)} S3 objects, {len(http_got)} REST messages "
          f"(expected {len(want_s3)} and {len(want_http)}; extra: {unexpected[0]} and {unexpected[1]})")
    return 0 if unexpected == (0, 0) else 1


sys.exit(asyncio.run(main()))
EOF

# ------------------------------------------------------------------ graceful stop
# The entrypoint is the worker itself (exec form), so SIGTERM reaches it as pid 1.
c=streamer-smoke-$RUN_ID-worker-2
stop_start=$(now_ms)
timeout 60 "${PODMAN[@]}" stop -t 30 "$c" > /dev/null
stop_ms=$(( $(now_ms) - stop_start ))
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$c")
[[ $code == 0 ]] || die "worker-2 exited with $code on SIGTERM"
say "worker-2 stopped on SIGTERM in ${stop_ms} ms, exit 0"

say "PASS"
cat <<EOF
image           $IMAGE (base $BASE_IMAGE)
image size      $(mb "$size_bytes") uncompressed, $(mb "$gz_bytes") gzip-compressed
start-up        worker-1 ${STARTUP_MS[worker-1]} ms, worker-2 ${STARTUP_MS[worker-2]} ms (podman run to /ready 200)
hardening       read-only root filesystem, uid $ruid, no capabilities
machine         $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) (start-up times grow with it)
EOF
