"""No key material and no spark_conf secret in what a run leaves behind: the Spark event log (every plan of the
run, as the Spark UI and history server show them), the job logs and every file of the lake.

ingest and clean run as their own processes (``crossrec ingest|clean``), as an operator runs them, with the event
log turned on: the shared test session cannot turn it on after it started.
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from support import write_raw

pytestmark = [pytest.mark.spark, pytest.mark.slow]

KEY = "leak-probe-key-5f3a9c1e7b2d4a60"
SECRET = "SECRETVALUE-9d8c7b6a5f4e"


def key_forms(key: bytes) -> dict[str, bytes]:
    """The key as it could appear: raw, hex, base64, and XORed with HMAC's inner and outer pads."""
    forms = {"raw": key, "hex": key.hex().encode(), "HEX": key.hex().upper().encode(),
             "base64": base64.b64encode(key).rstrip(b"=")}
    padded = key.ljust(64, b"\0")
    for name, pad in (("ipad", 0x36), ("opad", 0x5C)):
        x = bytes(b ^ pad for b in padded)
        forms |= {f"{name}-hex": x.hex().encode(), f"{name}-HEX": x.hex().upper().encode(),
                  f"{name}-base64": base64.b64encode(x).rstrip(b"=")}
    return forms


def test_no_key_or_secret_in_event_logs_job_logs_or_the_lake(tmp_path):
    raw, lake, events = write_raw(tmp_path / "raw"), tmp_path / "lake", tmp_path / "events"
    events.mkdir()
    (tmp_path / "key").write_text(KEY + "\n")
    config = tmp_path / "crossrec.toml"
    config.write_text(f'lake_root = "{lake}"\nraw_dir = "{raw}"\npseudonym_key_file = "{tmp_path / "key"}"\n'
                      f'run_date = "2024-06-30"\nspark_master = "local[2]"\n[spark_conf]\n'
                      f'"spark.eventLog.enabled" = "true"\n"spark.eventLog.dir" = "file://{events}"\n'
                      f'"spark.eventLog.compress" = "false"\n"spark.sql.shuffle.partitions" = "2"\n'
                      f'"spark.hadoop.fs.s3a.secret.key" = "{SECRET}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSREC_")}
    for stage in ("ingest", "clean"):
        r = subprocess.run([sys.executable, "-m", f"crossrec_jobs.{stage}", "--config", str(config)],
                           capture_output=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr.decode()[-3000:]
        (tmp_path / f"{stage}.log").write_bytes(r.stdout + r.stderr)
    assert any(events.iterdir()), "no event log was written: nothing to search"
    forms = key_forms(KEY.encode())
    hits = []
    for path in [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("key", "crossrec.toml")]:
        data = path.read_bytes()
        hits += [f"{path.relative_to(tmp_path)}: key as {name}" for name, form in forms.items() if form in data]
        hits += [f"{path.relative_to(tmp_path)}: the spark_conf secret"] if SECRET.encode() in data else []
    assert not hits, hits
    logged = b"".join(p.read_bytes() for p in events.rglob("*") if p.is_file())
    assert b"pseudonym(" in logged, "the plans were logged and searched"
