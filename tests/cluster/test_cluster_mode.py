"""Cluster mode on real engines: a Spark standalone cluster (master + 2 workers) and a Ray cluster (head + 1
worker node) on loopback, started by ``crossrec cluster up``; training runs through ``ray.init(address=...)`` and
the score job through ``spark-submit``, exactly as on a real cluster. Faults: a Ray Train worker process is killed
mid-epoch (training resumes from the last checkpoint and finishes); a Spark worker is killed during scoring (the
job still completes with every row exactly once); the score job's driver is killed mid-write, once its first
data file is on disk (no version is committed, readers see none of its rows, the previous run reads as before).

The lake is a copy of the session's ``scored_lake`` (conftest.py), built by the data jobs in local mode: as one
spark-submit application on this 2-core cluster they took ~230 s, and their code is the same either way. The
score job is what runs through spark-submit here (``--spark-master none``, Delta from ``--packages``, Python on
the executors), with ``--no-validate --no-publish``: what the faults can break is the rows it writes (output
checks and publishing are the same code on any session and took ~40 s of this test on the loopback cluster;
they are tested in local mode, tests/score/test_score.py). That a re-run after a killed driver completes is
tested in local mode too.

The Ray driver runs in its own process, as ``crossrec train --ray-address`` would on a real cluster: a pytest
process that already ran a local Ray instance keeps that instance's session state (and auth settings).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

pytest.importorskip("ray")

from crossrec import cluster  # noqa: E402
from crossrec.io.readers import published_run, read_recommendations, read_table  # noqa: E402
from support import SCORE_DAY  # noqa: E402

NEXT_DAY = "2025-01-02"  # the run the killed driver was writing

ROOT = Path(__file__).resolve().parents[2]
DELTA = "io.delta:delta-spark_4.2_2.13:4.4.0"


def submit(info: dict, stage: str, args: list[str], log: Path, own_group: bool = False) -> subprocess.Popen:
    """``spark-submit jobs/<stage>.py`` to the standalone master (Delta from Maven, 1-core 1g executors).
    ``own_group``: in a process group of its own (the driver's JVM and its Python process), so it can be killed
    whole."""
    cmd = [os.path.join(cluster.spark_home(), "bin", "spark-submit"), "--master", info["spark_master"],
           "--packages", DELTA, "--conf", "spark.executor.memory=1g", "--conf", "spark.executor.cores=1",
           "--conf", "spark.sql.shuffle.partitions=2", "--conf", f"spark.pyspark.python={sys.executable}",
           "--conf", "spark.locality.wait=0",
           "--conf", "spark.task.maxFailures=4", "--conf", "spark.databricks.delta.snapshotPartitions=2",
           str(ROOT / "jobs" / f"{stage}.py"), *args, "--spark-master", "none"]
    # the driver's scratch (its copy of the Delta jars, block files) goes under the test's folder, not /tmp
    local_dirs = log.parent / "spark-local"
    local_dirs.mkdir(exist_ok=True)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_DIRS=str(local_dirs))
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=own_group)


TRAIN = """
import json, sys
from crossrec.train.config import TrainConfig
from crossrec.train.driver import train
from crossrec.train.faults import FailOnce
lake, address, marker = sys.argv[1:4]
folder = train(TrainConfig(lake_root=lake, ray_address=address, workers=2, epochs=2, patience=2, d_model=16, n_layers=1,
                           batch_size=32, max_failures=1, refit=False,
                           fail_once_at=FailOnce(epoch=1, step=1, rank=1, marker=marker)))
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


def kill_when_files_appear(proc: subprocess.Popen, folder: Path, pattern: str) -> threading.Thread:
    """A thread that kills ``proc``'s process group as soon as a file matching ``pattern`` exists under ``folder``:
    the job has started writing data files and has not committed them."""
    def watch() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if next(folder.glob(pattern), None) is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.1)

    t = threading.Thread(target=watch)
    t.start()
    return t


def run_ok(proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, f"{proc.args[-3:]} exit {rc}:\n{log.read_text()[-4000:]}"


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.ray
def test_spark_submit_and_ray_cluster_end_to_end_with_faults(scored_lake, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(scored_lake["lake"], lake)
    common = ["--lake-root", str(lake), "--pseudonym-key-file", str(scored_lake["key"]), "--run-date", SCORE_DAY]
    info = cluster.up(str(tmp_path / "cluster"), spark_workers=2, worker_cores=1, worker_memory="1g")
    try:
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
        assert folder.parent == lake / "models"

        # score with the new model in ~24 small tasks; kill one Spark worker once tasks are running
        log = tmp_path / "score.log"
        proc = submit(info, "score", [*common, "--k", "5", "--users-per-partition", "5", "--no-validate", "--no-publish",
                                      "--model-version", str(folder)], log)
        killed = threading.Event()
        t = kill_when_scoring(proc, log, lambda: (os.killpg(info["pids"]["spark_worker_1"], signal.SIGKILL), killed.set()))
        run_ok(proc, log)
        t.join()
        assert killed.is_set(), "the worker was not killed while the job ran"
        assert not cluster.status(str(tmp_path / "cluster"))["alive"]["spark_worker_1"]

        # the driver killed mid-write: a score run for the next day, its driver (spark-submit's JVM and the job's
        # Python) killed as soon as its first data file is on disk; nothing is committed
        table = lake / "gold" / "recommendations"
        before = DeltaTable(str(table)).version()
        log = tmp_path / "score-killed.log"
        proc = submit(info, "score", [*common[:-1], NEXT_DAY, "--k", "5", "--users-per-partition", "5",
                                      "--no-validate", "--no-publish"], log, own_group=True)
        t = kill_when_files_appear(proc, table, f"run_date={NEXT_DAY}/**/*.parquet")
        rc = proc.wait(timeout=900)
        t.join()
        assert rc == -signal.SIGKILL, f"the driver was not killed mid-write (exit {rc}):\n{log.read_text()[-4000:]}"
    finally:
        cluster.down(str(tmp_path / "cluster"))

    assert next(table.glob(f"run_date={NEXT_DAY}/**/*.parquet"), None) is not None, "it was killed while writing"
    assert DeltaTable(str(table)).version() == before, "the killed run committed nothing"
    assert read_recommendations(str(lake), run_date=NEXT_DAY).empty, "readers see none of its files"

    assert cluster.status(str(tmp_path / "cluster")) is None, "down removed the cluster state"
    assert not [p.pid for p in cluster.ray_processes(info["ray_tmp"])], "down stopped every process of the Ray cluster"
    published = published_run(str(lake))
    assert published["model_version"] != folder.name, "--no-publish: readers still get the lake's earlier run"
    recs = read_recommendations(str(lake), run_date=SCORE_DAY)  # the partition the cluster run overwrote
    assert (recs.run_date.astype(str) == SCORE_DAY).all() and (recs.model_version == folder.name).all()
    users = read_table(str(lake), "silver.interactions", columns=["user_id"]).user_id.nunique()
    assert recs.user_id.nunique() == users, "every user scored once the lost tasks were re-run"
    assert not recs.duplicated(["user_id", "domain", "rank"]).any(), "no row written twice"
    assert set(recs.groupby(["user_id", "domain"]).size()) == {5}
