"""The deployment configuration: one validated model, its README table, `streamer config`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.config import Config, ConfigError, markdown_table

ROOT = Path(__file__).resolve().parent.parent
KEY = base64.b64encode(b"k" * 32).decode()


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    return subprocess.run([sys.executable, "-m", "streamer", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_the_readme_table_is_generated_from_the_model():
    assert markdown_table() in (ROOT / "README.md").read_text(), "run `streamer config --markdown` into the README"


def test_contradictory_settings_fail_naming_every_variable(monkeypatch):
    monkeypatch.setenv("STREAMER_DELIVERY_DEADLINE_S", "2")
    monkeypatch.setenv("STREAMER_HTTP_TIMEOUT_S", "10")
    monkeypatch.setenv("STREAMER_RETRY_HORIZON_S", "60")
    with pytest.raises(ConfigError) as e:
        Config.from_env()
    assert "STREAMER_DELIVERY_DEADLINE_S" in str(e.value) and "STREAMER_RETRY_HORIZON_S" in str(e.value)


def test_a_worker_with_an_invalid_configuration_exits_2_at_start():
    done = run(["worker"], STREAMER_WEB_PORT="x", STREAMER_ENCRYPTION_KEYS="e1:" + base64.b64encode(b"short").decode())
    assert done.returncode == 2
    assert "STREAMER_WEB_PORT" in done.stderr and "needs 32" in done.stderr


def test_streamer_config_prints_the_effective_configuration_with_secrets_redacted():
    done = run(["config"], STREAMER_SIGNING_KEYS=f"s1:{KEY}", STREAMER_ENCRYPTION_KEYS=f"e1:{KEY}",
               STREAMER_BATCH_MAX="42")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["batch_max"] == 42 and shown["signing_keys"] == {"s1": "***"}
    assert KEY not in done.stdout


def test_the_wheel_installs_only_the_streamer_package(tmp_path):
    """No top-level `topics` (or any other) package lands in site-packages beside streamer,
    and the benchmark is not installed."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", ".cache", ".local", "tests",
                                                              "__pycache__", "*.egg-info", "build"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("streamer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"streamer"}, tops
    # The benchmark stays in the checkout; `streamer dev` and `streamer demo` ship.
    assert not [n for n in names if n.startswith("streamer/benchmark/")]
    assert "streamer/dev/local.py" in names and "streamer/demo.py" in names
