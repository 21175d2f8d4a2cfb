"""Cluster mode on real engines: a Spark standalone cluster (master + 2 workers) and a Ray cluster (head + 1
worker node) on loopback, started by ``crossrec cluster up``; the jobs run through ``spark-submit`` and training
through ``ray.init(address=...)``, exactly as on a real cluster. Faults: a Ray Train worker process is killed
mid-epoch (training resumes from the last checkpoint and finishes); a Spark worker is killed during scoring
(the job still completes with every row exactly once); the spark-submit driver is killed while the next run writes
(the previous table version stays what readers get).

The Ray driver runs in its own process, as ``crossrec train --ray-address`` would on a real cluster: a pytest
process that already ran a local Ray instance keeps that instance's session state (and auth settings).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("ray")

from crossrec import cluster  # noqa: E402
from deltalake import DeltaTable  # noqa: E402

from crossrec.data.synthetic import SyntheticSpec, generate  # noqa: E402
from crossrec.io.readers import published_run, read_recommendations, read_table  # noqa: E402
from conftest import TEST_KEY  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DELTA = "io.delta:delta-spark_4.2_2.13:4.4.0"


def submit(info: dict, stage: str, args: list[str], log: Path, new_session: bool = False) -> subprocess.Popen:
    """``spark-submit jobs/<stage>.py`` to the standalone master (Delta from Maven, 1-core 1g executors)."""
    cmd = [os.path.join(cluster.spark_home(), "bin", "spark-submit"), "--master", info["spark_master"],
           "--packages", DELTA, "--conf", "spark.executor.memory=1g", "--conf", "spark.executor.cores=1",
           "--conf", "spark.sql.shuffle.partitions=2", "--conf", f"spark.pyspark.python={sys.executable}",
           "--conf", "spark.locality.wait=0",
           "--conf", "spark.task.maxFailures=4", "--conf", "spark.databricks.delta.snapshotPartitions=2",
           str(ROOT / "jobs" / f"{stage}.py"), *args, "--spark-master", "none"]
    # the driver's scratch (its copy of the Delta jars, block files) goes under the test's folder: a driver that a
    # test kills never runs Spark's shutdown hook, and its spark-* folder would otherwise stay in /tmp for good
    local_dirs = log.parent / "spark-local"
    local_dirs.mkdir(exist_ok=True)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_DIRS=str(local_dirs))
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=new_session)


TRAIN = """
import json, sys
from crossrec.train.loop import FailOnce, TrainConfig, train
lake, address, marker = sys.argv[1:4]
folder = train(TrainConfig(lake_root=lake, ray_address=address, workers=2, epochs=2, patience=2, d_model=16, n_layers=1,
                           batch_size=32, max_failures=1, fail_once_at=FailOnce(epoch=1, step=1, rank=1, marker=marker)))
print("ARTIFACT", folder)
"""


def kill_when_scoring(proc: subprocess.Popen, log: Path, kill) -> threading.Thread:
    """A thread that calls ``kill()`` a few seconds after the score job logs that its tasks are running."""
    def watch() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if "scoring" in log.read_text():
                time.sleep(3)
                if proc.poll() is None:
                    kill()
                return
            time.sleep(0.5)

    t = threading.Thread(target=watch)
    t.start()
    return t


def run_ok(proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, f"{proc.args[-3:]} exit {rc}:\n{log.read_text()[-4000:]}"


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.ray
def test_spark_submit_and_ray_cluster_end_to_end_with_faults(tmp_path):
    raw, lake, key = tmp_path / "raw", tmp_path / "lake", tmp_path / "key"
    key.write_text(TEST_KEY)
    generate(raw, SyntheticSpec(users=150, domains=2, items_per_domain=40, mean_events_per_user=12, seed=21))
    common = ["--lake-root", str(lake), "--pseudonym-key-file", str(key), "--run-date", "2025-01-01"]
    info = cluster.up(str(tmp_path / "cluster"), spark_workers=2, worker_cores=1, worker_memory="1g")
    try:
        # the data stages in one application (jobs/prepare.py runs ingest -> clean -> features; each stage's
        # own job file is that code with a session of its own): one driver and one set of executors to start.
        # Without the tables' checks (~45 s here): the score runs below validate on the cluster
        log = tmp_path / "prepare.log"
        run_ok(submit(info, "prepare", [*common, "--raw-dir", str(raw), "--no-validate"], log), log)
        assert all(f"prepare: {s} done" in log.read_text() for s in ("ingest", "clean", "features"))
        # training on the Ray cluster from a driver process of its own; rank 1's worker process is killed in
        # epoch 1 and training resumes
        marker = tmp_path / "killed-once"
        r = subprocess.run([sys.executable, "-c", TRAIN, str(lake), info["ray_address"], str(marker)], text=True,
                           capture_output=True, timeout=900, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
        assert r.returncode == 0, f"training on the Ray cluster failed:\n{(r.stdout + r.stderr)[-4000:]}"
        folder = Path(r.stdout.split("ARTIFACT ")[-1].strip())
        m = json.loads((folder / "metrics.json").read_text())
        assert marker.exists() and m["resumed_at_epochs"] == [1], "the killed worker's group resumed from epoch 0's checkpoint"
        assert [h["epoch"] for h in m["history"]] == [0, 1]

        # score with 30 small tasks; kill one Spark worker once tasks are running
        log = tmp_path / "score.log"
        proc = submit(info, "score", [*common, "--k", "5", "--users-per-partition", "5"], log)
        killed = threading.Event()
        t = kill_when_scoring(proc, log, lambda: (os.killpg(info["pids"]["spark_worker_1"], signal.SIGKILL), killed.set()))
        run_ok(proc, log)
        t.join()
        assert killed.is_set(), "the worker was not killed while the job ran"
        assert not cluster.status(str(tmp_path / "cluster"))["alive"]["spark_worker_1"]
        path = str(lake / "gold" / "recommendations")
        key = ["user_id", "domain", "rank"]
        v1 = DeltaTable(path).version()
        recs1 = read_recommendations(str(lake)).sort_values(key, ignore_index=True)

        # the next night's run: its driver (spark-submit and the driver JVM) is killed while the tasks write
        next_day = [a if a != "2025-01-01" else "2025-01-02" for a in common]
        log = tmp_path / "score-killed.log"
        proc = submit(info, "score", [*next_day, "--k", "5", "--users-per-partition", "5"], log, new_session=True)
        t = kill_when_scoring(proc, log, lambda: os.killpg(proc.pid, signal.SIGKILL))
        proc.wait(timeout=900)
        t.join()
        assert proc.returncode == -signal.SIGKILL, f"the driver was not killed mid-write:\n{log.read_text()[-3000:]}"
        assert DeltaTable(path).version() == v1, "a killed driver commits nothing"
        assert published_run(str(lake))["run_date"] == "2025-01-01", "readers still get the previous run"
        pd.testing.assert_frame_equal(read_recommendations(str(lake)).sort_values(key, ignore_index=True), recs1)
        # (that a re-run then completes is tested in local mode: tests/score/test_score.py)
    finally:
        cluster.down(str(tmp_path / "cluster"))

    assert cluster.status(str(tmp_path / "cluster")) is None, "down removed the cluster state"
    assert not [p.pid for p in cluster.ray_processes(info["ray_tmp"])], "down stopped every process of the Ray cluster"
    recs = read_recommendations(str(lake))
    assert (recs.run_date.astype(str) == "2025-01-01").all()
    users = read_table(str(lake), "silver.interactions", columns=["user_id"]).user_id.nunique()
    assert recs.user_id.nunique() == users, "every user scored once the lost tasks were re-run"
    assert not recs.duplicated(["user_id", "domain", "rank"]).any(), "no row written twice"
    assert set(recs.groupby(["user_id", "domain"]).size()) == {5}
