"""crossrec nightly: raw logs -> validated lake -> (re)trained model -> top-K for every user -> published.

Tasks (one per crossrec stage; the DAG holds no logic of its own, every task runs a `crossrec` job)::

    ingest -> clean -> validate_silver -> features -> choose_model --> train -------\\
                                                                  \\-> reuse_model --> score -> recorded_output -> publish -> maintain

* **ingest / clean / features**: raw files of ``{raw_dir}`` -> bronze -> silver -> gold, nightly by merging what
  is new (each job validates what it wrote with Great Expectations before recording the run in ``ops.runs``, and
  fails the task on a failed check or unbalanced accounting; the next job reads only recorded versions).
* **validate_silver**: re-checks silver against its contracts (``crossrec validate``) before anything reads it.
* **choose_model**: trains when the model registry has no ``champion`` yet or when the run's weekday is
  ``train_weekday``; otherwise the champion (``models:/crossrec@champion``) is reused. A new model takes the
  alias only through train's promotion gate.
* **score**: ``crossrec score --no-publish`` writes the run's partition of gold.recommendations and runs the
  output checks on it (K per user and domain, ranks, scores, no seen items, every active user) before recording it.
* **recorded_output**: the table version the run's score recorded in ``ops.runs`` (validated); to publish via XCom.
* **publish**: points readers at that version (``crossrec publish --skip-checks --table-version V``); only forward
  in time. Its outlet is the Airflow asset ``crossrec_gold_recommendations``
  (:func:`crossrec.orchestration.recommendations_asset`): consumer DAGs schedule on it
  (``airflow_dags/crossrec_consumer_example.py``).
* **maintain**: ``crossrec maintain`` (compaction, retention, VACUUM; Z-order on the retrain weekday).

Every task runs its stage as a process of its own (``python -m crossrec.cli.main <stage>``, or ``spark-submit`` for
the Spark stages when ``CROSSREC_SPARK_SUBMIT`` is set): the Airflow worker itself starts no JVM and no Ray; with
``CROSSREC_SPARK_REMOTE`` the Spark stages are clients of a Spark Connect server and start no JVM either. A stage
that exits 2 (bad input), 3 (validation) or 4 (accounting) fails its task without a retry
(``AirflowFailException``): the same input fails the same way until the data or the code is fixed. Other failures
(a busy lake, exit 5; a lost executor) are retried twice, 5 minutes apart. Every task has an
``execution_timeout``, and the run has a deadline (``crossrec.orchestration.deadline_missed`` logs the miss).

Schedule: ``CronDataIntervalTimetable("0 0 * * *", UTC)``. A run covers the day ``[D, D+1)`` and starts once that
day is over; every job runs with ``--run-date D`` (the run's ``data_interval_start``), the day of data.

Idempotent per day of data: ingest skips files a recorded run ingested, clean/features merge what arrived since
their last recorded run (a failed run's commits are rolled back first, so a failing input fails again on every
retry), train reuses a run of the same configuration on the same data and day, score replaces that date's partition
(one Delta commit), publish sets a pointer. A failed or retried task can therefore simply run again.

Configuration (environment of the Airflow workers; the DAG file reads it when a task runs):

==============================  ==============================================================================
``CROSSREC_LAKE_ROOT``          lakehouse root (default ``lakehouse``; any Hadoop URI on a cluster)
``CROSSREC_RAW_DIR``            raw data set; ``{ds}`` is replaced by the run date (default ``demo-data/raw``)
``CROSSREC_PSEUDONYM_KEY_FILE`` the pseudonymisation secret (or ``CROSSREC_PSEUDONYM_KEY``)
``CROSSREC_TRAIN_WEEKDAY``      0=Monday .. 6=Sunday: retrain on that weekday (default 6); ``daily``/``never``
``CROSSREC_TRAIN_ARGS``         extra ``crossrec train`` flags, e.g. ``--workers 4 --ray-address auto --epochs 10``
``CROSSREC_K``                  items per user and domain (default 10)
``CROSSREC_SPARK_SUBMIT``       empty (default): a Spark stage runs as ``python -m crossrec.cli.main <stage>`` on
                                the embedded ``local[*]`` session; else the spark-submit command line to use, e.g.
                                ``spark-submit --master spark://host:7077 --packages io.delta:delta-spark_4.2_2.13:4.4.0``
                                (the job file is appended with ``--spark-master none``)
``CROSSREC_SPARK_REMOTE``       a Spark Connect server (``sc://host:15002``): every Spark stage runs as its client
                                (no JVM on the Airflow worker; see ``crossrec cluster connect``)
``CROSSREC_TASK_TIMEOUT_HOURS`` execution_timeout of every task but train (default 6)
``CROSSREC_TRAIN_TIMEOUT_HOURS`` execution_timeout of train (default 12)
``CROSSREC_DEADLINE_HOURS``     the run's deadline, hours after it was queued (default 20; ``off``: none)
==============================  ==============================================================================
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import subprocess
import sys

from airflow.sdk import CronDataIntervalTimetable, DeadlineAlert, DeadlineReference, SyncCallback, TriggerRule
from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from crossrec.orchestration import EXIT_MEANING, deadline_missed, is_permanent, recommendations_asset

log = logging.getLogger("crossrec.airflow")

SPARK_STAGES = ("ingest", "clean", "validate", "features", "score", "publish", "maintain")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _hours(name: str, default: float) -> dt.timedelta:
    return dt.timedelta(hours=float(_env(name, str(default))))


DEFAULT_ARGS = {"retries": 2, "retry_delay": dt.timedelta(minutes=5),
                "execution_timeout": _hours("CROSSREC_TASK_TIMEOUT_HOURS", 6)}


def _deadline() -> DeadlineAlert | None:
    """The run's deadline: ``CROSSREC_DEADLINE_HOURS`` after it was queued (``off``: none)."""
    if _env("CROSSREC_DEADLINE_HOURS", "20").strip().lower() in ("off", "0", ""):
        return None
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=_hours("CROSSREC_DEADLINE_HOURS", 20),
                         callback=SyncCallback(deadline_missed))


def _run_date() -> str:
    return get_current_context()["data_interval_start"].date().isoformat()


def _common(raw: bool = False) -> list[str]:
    args = ["--lake-root", _env("CROSSREC_LAKE_ROOT", "lakehouse"), "--run-date", _run_date()]
    if raw:
        args += ["--raw-dir", _env("CROSSREC_RAW_DIR", "demo-data/raw").replace("{ds}", _run_date())]
    return args


def stage_command(stage: str, args: list[str]) -> list[str]:
    """The command line of one crossrec stage: spark-submit of its job file when ``CROSSREC_SPARK_SUBMIT`` is set
    (Spark stages), else ``python -m crossrec.cli.main <stage>``."""
    submit = _env("CROSSREC_SPARK_SUBMIT").strip()
    if submit and stage in SPARK_STAGES:
        import importlib.util

        job_file = importlib.util.find_spec(f"crossrec_jobs.{stage}").origin
        return [*shlex.split(submit), job_file, *args, "--spark-master", "none"]
    return [sys.executable, "-m", "crossrec.cli.main", stage, *args]


def run_stage(stage: str, args: list[str]) -> None:
    """Run one crossrec stage as a process of its own. Exit 2/3/4 fail the task for good (no retry: the same input
    fails again); any other non-zero exit fails it for a retry. A task killed (timeout) takes the stage with it."""
    cmd = stage_command(stage, args)
    log.info("running %s", " ".join(cmd))
    proc = subprocess.Popen(cmd)
    try:
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if rc == 0:
        return
    if is_permanent(rc):
        raise AirflowFailException(f"crossrec {stage} failed with exit code {rc} ({EXIT_MEANING[rc]}): not retried, "
                                   "the same input fails again; see the task log")
    raise RuntimeError(f"crossrec {stage} failed with exit code {rc}")


def has_champion(lake_root: str) -> bool:
    """Whether the lake's model registry has a ``champion`` (``CROSSREC_MLFLOW_TRACKING_URI`` names a server)."""
    from crossrec.io.registry import Registry

    return Registry(lake_root, os.environ.get("CROSSREC_MLFLOW_TRACKING_URI") or None).champion() is not None


def should_train(champion_exists: bool, run_date: dt.date, weekday_setting: str) -> bool:
    """Train when there is no champion yet, or on the configured weekday ('daily' / 'never' also allowed)."""
    if not champion_exists or weekday_setting == "daily":
        return True
    if weekday_setting == "never":
        return False
    return run_date.weekday() == int(weekday_setting)


def recorded_score_version(lake_root: str, run_date: str) -> int:
    """The gold.recommendations version the newest succeeded score run of ``run_date`` recorded (it validated it)."""
    from crossrec.io.runs import Ledger

    runs = [r for r in Ledger(lake_root).succeeded("score") if r["run_date"] == run_date]
    if not runs or not runs[-1]["details"].get("validated"):
        raise RuntimeError(f"no validated score run for {run_date} in {lake_root}/ops/runs")
    return int(runs[-1]["writes"]["gold.recommendations"])


@dag(
    dag_id="crossrec_nightly",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=_deadline(),
    tags=["crossrec"],
    doc_md=__doc__,
)
def crossrec_nightly():
    @task
    def ingest() -> None:
        run_stage("ingest", _common(raw=True))

    @task
    def clean() -> None:
        run_stage("clean", _common(raw=True))

    @task
    def validate_silver() -> None:
        run_stage("validate", [*_common(), "--tables", "silver.interactions,silver.items,silver.quarantine"])

    @task
    def features() -> None:
        run_stage("features", _common(raw=True))

    @task.branch
    def choose_model() -> str:
        lake = _env("CROSSREC_LAKE_ROOT", "lakehouse")
        train_it = should_train(has_champion(lake), dt.date.fromisoformat(_run_date()), _env("CROSSREC_TRAIN_WEEKDAY", "6"))
        log.info("model: %s", "train a new one" if train_it else "reuse the champion")
        return "train" if train_it else "reuse_model"

    @task(execution_timeout=_hours("CROSSREC_TRAIN_TIMEOUT_HOURS", 12))
    def train() -> None:
        run_stage("train", [*_common(), *shlex.split(_env("CROSSREC_TRAIN_ARGS", "--workers 2"))])

    @task
    def reuse_model() -> None:
        lake = _env("CROSSREC_LAKE_ROOT", "lakehouse")
        if not has_champion(lake):
            raise RuntimeError(f"no champion in the model registry of {lake}: set CROSSREC_TRAIN_WEEKDAY=daily or run "
                               "crossrec train")
        log.info("reusing models:/crossrec@champion")

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def score() -> None:
        run_stage("score", [*_common(), "--k", _env("CROSSREC_K", "10"), "--no-publish"])

    @task
    def recorded_output() -> int:
        return recorded_score_version(_env("CROSSREC_LAKE_ROOT", "lakehouse"), _run_date())

    @task(outlets=[recommendations_asset()])
    def publish(version: int) -> None:
        run_stage("publish", [*_common(), "--skip-checks", "--table-version", str(version)])

    @task
    def maintain() -> None:
        retrain_day = should_train(True, dt.date.fromisoformat(_run_date()), _env("CROSSREC_TRAIN_WEEKDAY", "6"))
        run_stage("maintain", [*_common(), *(["--zorder"] if retrain_day else [])])

    chosen = choose_model()
    ingest() >> clean() >> validate_silver() >> features() >> chosen
    scored = score()
    chosen >> [train(), reuse_model()] >> scored
    checked = recorded_output()
    scored >> checked
    publish(checked) >> maintain()


dag_object = crossrec_nightly()
