"""The alerts (k8s/base/prometheusrule.yaml) and the Grafana dashboard (k8s/grafana/) use only
metrics a running worker really exposes: a renamed metric would otherwise silence an alert
without anyone noticing. The rule file's structure is checked by tests/test_deploy.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "k8s" / "base" / "prometheusrule.yaml"
DASHBOARD = ROOT / "k8s" / "grafana" / "streamer-dashboard.json"
# Series Prometheus makes itself, not the worker.
SYNTHETIC = {"up"}


def exposed(text: str) -> set[str]:
    """Every series name /metrics can produce, including families with no sample yet."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                        "summary": ["_sum", "_count", "_created"]}.get(kind, [""])
            names |= {name + s for s in suffixes} | {name}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def used(expr: str) -> set[str]:
    return set(re.findall(r"\b(streamer_[a-z0-9_]+)\b", expr)) | (set(re.findall(r"\b([a-z_]+)\{", expr)) & SYNTHETIC)


def test_every_metric_in_the_alerts_and_the_dashboard_exists(worker_factory):
    worker = worker_factory()
    worker.wait_ready()
    status, body = worker.get("/metrics")
    assert status == 200
    have = exposed(body.decode())

    rules = [r for g in yaml.safe_load(RULES.read_text())["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"StreamerConsumerLagGrowing", "StreamerDestinationBreakerOpen", "StreamerDeadLettersRising",
            "StreamerWorkerNotReady", "StreamerSettingsCommandsRejected"} <= alerts
    recorded = {r["record"] for r in rules if "record" in r}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {f"rule {r.get('alert') or r.get('record')}": r["expr"] for r in rules}
    exprs |= {f"panel {p['title']}": t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    missing = {where: sorted(used(e) - have - SYNTHETIC) for where, e in exprs.items() if used(e) - have - SYNTHETIC}
    assert not missing, missing
    # Recording rules the dashboard reads are defined in the rule file.
    for where, expr in exprs.items():
        for name in re.findall(r"\b(streamer:[a-z0-9_:]+)", expr):
            assert name in recorded, (where, name)
    for r in rules:
        if "alert" in r:
            assert r["labels"]["severity"] in {"info", "warning", "critical"} and r["annotations"]["summary"]
