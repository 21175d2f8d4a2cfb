"""The run ledger (``ops.runs``): which table versions each stage read and wrote, so every run is consistent.

Contract (schemas/ops_runs.yaml):

* A stage reads the **recorded** version of each input table: the newest version a *succeeded* run wrote
  (:meth:`Ledger.recorded_versions`), never simply the newest commit. Commits of a killed or failed run are
  therefore invisible to readers.
* A stage validates what it wrote *before* recording the run; a failed validation leaves the commits unrecorded.
* Before writing, a stage restores each of its output tables whose newest commits change data beyond the recorded
  version (a killed run, a failed validation) to that version (:func:`rollback_unrecorded`), so a re-run starts
  from the last good state and a failing input fails again on every retry.
* Two runs of one stage on one lake cannot overlap: :func:`stage_lock` refuses the second (:class:`StageBusy`).

The ledger is read and appended with the ``deltalake`` package (no JVM), so the training stage records too.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from crossrec import columns as C

log = logging.getLogger(__name__)

RUNS_TABLE = "ops.runs"
SUCCEEDED, FAILED = "succeeded", "failed"
# Delta operations that change a table's rows; other commits (properties, OPTIMIZE, VACUUM) leave them as they were
DATA_OPERATIONS = frozenset({"WRITE", "MERGE", "DELETE", "UPDATE", "RESTORE", "TRUNCATE", "STREAMING UPDATE",
                             "CREATE TABLE AS SELECT", "REPLACE TABLE AS SELECT", "CREATE OR REPLACE TABLE AS SELECT"})


NO_CHANGES = ("rollback", "adopt", "maintain")  # runs whose commits restore, adopt or compact: no rows to read as changes


class StageBusy(RuntimeError):
    """Another run of the same stage holds the lake's lock for it."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _table_path(lake_uri: str, table: str) -> str:
    layer, _, name = table.partition(".")
    return f"{lake_uri.rstrip('/')}/{layer}/{name}"


def _arrow_schema():
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    fields = [(C.RUN_ID, pa.string()), (C.STAGE, pa.string()), (C.RUN_DATE, pa.string()), ("status", pa.string()),
              ("mode", pa.string()), ("reads", pa.string()), ("writes", pa.string()), ("accounting", pa.string()),
              (C.DETAILS, pa.string()), ("started_at", ts), ("finished_at", ts), ("seconds", pa.float64())]
    return pa.schema([pa.field(n, t, nullable=False) for n, t in fields])


@dataclass
class StageRun:
    """One run of a stage while it runs: what it read and wrote, its accounting and details (filled by the stage)."""

    stage: str
    run_id: str
    run_date: str
    mode: str = "incremental"
    reads: dict[str, int] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    accounting: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    started_at: dt.datetime = field(default_factory=_now)

    _lap_at: float = field(default_factory=time.perf_counter, repr=False)

    def lap(self, step: str) -> None:
        """End a step of the run: its seconds since the previous step are logged and kept in ``details["steps"]``."""
        now = time.perf_counter()
        seconds = round(now - self._lap_at, 2)
        self._lap_at = now
        steps = self.details.setdefault("steps", {})
        steps[step] = round(steps.get(step, 0.0) + seconds, 2)
        log.info("%s: %s %.1fs", self.stage, step, seconds)


class Ledger:
    """``ops.runs`` of the lake at ``lake_uri``."""

    def __init__(self, lake_uri: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.path = _table_path(lake_uri, RUNS_TABLE)
        self.storage_options = dict(storage_options or {})
        self._runs = None  # the ledger as first read (runs())

    def runs(self):
        """Every recorded run as a pandas frame (empty, with the ledger's columns, on a lake without runs).

        Read once per instance (a stage reads the ledger as it was when it started); :meth:`record` re-reads."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        from crossrec.io.readers import arrow_table

        if self._runs is None:
            try:
                self._runs = arrow_table(DeltaTable(self.path, storage_options=self.storage_options or None)).to_pandas()
            except TableNotFoundError:
                return _arrow_schema().empty_table().to_pandas()
        return self._runs

    def exists(self) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.path, storage_options=self.storage_options or None)

    def ensure(self, lake_uri: str) -> None:
        """Create the ledger on first use. A lake from before the ledger (tables, no ``ops.runs``) is adopted: its
        tables' newest versions are recorded as written by an ``adopt`` run (read with deltalake: no Spark needed)."""
        import pyarrow as pa
        from deltalake import DeltaTable, write_deltalake

        from crossrec.quality.contracts import all_contracts

        if self.exists():
            return
        opts = self.storage_options or None
        found = {}
        for c in all_contracts():
            path = _table_path(lake_uri, c.table)
            if c.table != RUNS_TABLE and DeltaTable.is_deltatable(path, storage_options=opts):
                found[c.table] = int(DeltaTable(path, storage_options=opts).version())
        write_deltalake(self.path, pa.Table.from_pylist([], schema=_arrow_schema()), mode="append", storage_options=opts)
        if found:
            log.warning("%s: no run ledger yet; adopting the tables' newest versions %s as recorded", lake_uri, found)
            self.record(StageRun("adopt", "adopt", _now().date().isoformat(), mode="full", writes=found), SUCCEEDED)

    def recorded_versions(self) -> dict[str, int]:
        """Per table, the newest version a succeeded run wrote."""
        out: dict[str, int] = {}
        for writes in self.runs().query("status == @SUCCEEDED")["writes"]:
            for table, version in json.loads(writes).items():
                out[table] = max(out.get(table, -1), int(version))
        return out

    def succeeded(self, stage: str | None = None) -> list[dict]:
        """Succeeded runs (of ``stage``), oldest first, with reads/writes/details parsed."""
        df = self.runs()
        df = df[df["status"] == SUCCEEDED]
        if stage is not None:
            df = df[df[C.STAGE] == stage]
        rows = df.sort_values("finished_at").to_dict("records")
        for r in rows:
            for k in ("reads", "writes", C.DETAILS, "accounting"):
                r[k] = json.loads(r[k])
        return rows

    def last(self, stage: str) -> dict | None:
        """The newest succeeded run of ``stage``, or None."""
        runs = self.succeeded(stage)
        return runs[-1] if runs else None

    def written_versions(self, table: str, after: int, upto: int) -> list[int]:
        """Versions of ``table`` in ``(after, upto]`` that succeeded runs wrote (what a reader of changes reads). A
        rollback's restore is left out: it brings back a recorded state, it adds no change."""
        vs = {int(r["writes"][table]) for r in self.succeeded() if table in r["writes"] and r[C.STAGE] not in NO_CHANGES}
        return sorted(v for v in vs if after < v <= upto)

    def record(self, run: StageRun, status: str, error: str | None = None) -> None:
        """Append ``run`` with ``status`` (one Delta commit)."""
        import pyarrow as pa
        from deltalake import write_deltalake

        finished = _now()
        details = dict(run.details)
        if error:
            details["error"] = error[:2000]
        row = {
            C.RUN_ID: run.run_id, C.STAGE: run.stage, C.RUN_DATE: run.run_date, "status": status, "mode": run.mode,
            "reads": json.dumps(run.reads, sort_keys=True), "writes": json.dumps(run.writes, sort_keys=True),
            "accounting": json.dumps([_accounting_dict(a) for a in run.accounting], sort_keys=True, default=str),
            C.DETAILS: json.dumps(details, sort_keys=True, default=str),
            "started_at": run.started_at, "finished_at": finished,
            "seconds": (finished - run.started_at).total_seconds(),
        }
        table = pa.Table.from_pylist([row], schema=_arrow_schema())
        write_deltalake(self.path, table, mode="append", storage_options=self.storage_options or None)
        self._runs = None
        log.info("ops.runs: %s %s %s (%s) read %s wrote %s", run.stage, run.run_id, status, run.mode, run.reads, run.writes)


def _accounting_dict(a) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(a) if is_dataclass(a) else dict(a)


def pinned_versions(spark, lake_uri: str, tables: list[str], ledger: Ledger | None = None) -> dict[str, int]:
    """The versions a stage reads: each table's recorded version. A lake from before the ledger (no ``ops.runs``)
    reads the newest versions. Raises ``RawFormatError`` naming a table that has no recorded version."""
    from crossrec.data.rawformat import RawFormatError
    from crossrec.io.delta import latest_version, table_exists

    ledger = ledger or Ledger(lake_uri)
    recorded = ledger.recorded_versions()
    out = {}
    for t in tables:
        if t in recorded:
            out[t] = recorded[t]
        elif not ledger.exists() and table_exists(spark, _table_path(lake_uri, t)):
            out[t] = latest_version(_table_path(lake_uri, t))
        else:
            raise RawFormatError(f"{t} has no version recorded by a succeeded run in {ledger.path}: run the stage "
                                 "that writes it first")
    return out


def rollback_unrecorded(spark, lake_uri: str, tables: list[str], ledger: Ledger) -> dict[str, int]:
    """Restore each of ``tables`` whose commits after its recorded version change data to that version.

    A table with no recorded version goes back to version 0 (the empty table its contract created). Returns the
    new versions of the tables restored (the caller records them).
    """
    from crossrec.io.delta import commits, latest_version, quote_path, table_exists

    recorded = ledger.recorded_versions()
    restored = {}
    for t in tables:
        path = _table_path(lake_uri, t)
        if not table_exists(spark, path):
            continue
        good = recorded.get(t, 0)
        changed = [c["version"] for c in commits(path, good) if c.get("operation") in DATA_OPERATIONS]
        if not changed:
            continue
        log.warning("%s: commit(s) %s after the recorded version %d belong to a run that did not finish (killed, or "
                    "its validation failed): restoring version %d", t, changed, good, good)
        spark.sql(f"RESTORE TABLE {quote_path(path)} TO VERSION AS OF {int(good)}")
        restored[t] = latest_version(path)
    return restored


# --------------------------------------------------------------------------- lock
class _FileLock:
    """A lock file on a local (or mounted) lake: created with ``O_CREAT | O_EXCL``, atomic on a POSIX filesystem."""

    def __init__(self, path: str):
        self.name = path

    def create(self, body: str) -> bool:
        os.makedirs(os.path.dirname(self.name), exist_ok=True)
        try:
            fd = os.open(self.name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        return True

    def read(self) -> tuple[dict, float]:
        """(holder, age in seconds); ``{}`` for an unreadable or vanished holder."""
        try:
            with open(self.name, encoding="utf-8") as fh:
                holder = json.load(fh)
            return (holder if isinstance(holder, dict) else {}), time.time() - os.path.getmtime(self.name)
        except (OSError, ValueError):
            return {}, 0.0

    def delete(self) -> None:
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass


class _S3Lock:
    """A lock object on an S3 lake (s3://, s3a://, s3n://): created with a conditional put (``If-None-Match: *``), which
    S3 and S3-compatible stores refuse atomically when the object exists. Endpoint and credentials come from the
    standard AWS variables, as for every other client of the lake (:mod:`crossrec.io.lakefs`)."""

    def __init__(self, uri: str):
        import boto3

        bucket, _, key = uri.split("://", 1)[1].partition("/")
        self.bucket, self.key, self.name = bucket, key, uri
        self.client = boto3.client("s3")

    def create(self, body: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body.encode("utf-8"), IfNoneMatch="*")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def read(self) -> tuple[dict, float]:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
            holder = json.loads(obj["Body"].read())
            return (holder if isinstance(holder, dict) else {}), (_now() - obj["LastModified"]).total_seconds()
        except (ClientError, ValueError):
            return {}, 0.0

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)


def _lock_store(lake_uri: str, stage: str) -> _FileLock | _S3Lock | None:
    """Where ``stage``'s lock lives on this lake (``<lake>/_locks/<stage>.lock``); None where no store for it is known
    (an object store other than S3)."""
    if lake_uri.startswith(("s3://", "s3a://", "s3n://")):
        return _S3Lock(f"{lake_uri.rstrip('/')}/_locks/{stage}.lock")
    if "://" in lake_uri and not lake_uri.startswith("file:"):
        return None
    return _FileLock(os.path.join(lake_uri.removeprefix("file:"), "_locks", f"{stage}.lock"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def stage_lock(lake_uri: str, stage: str, run_id: str, stale_after_s: float = 24 * 3600) -> Iterator[None]:
    """Hold the lake's lock for ``stage``: ``<lake>/_locks/<stage>.lock``, created only if absent, in one atomic step (a
    file created exclusively on a local lake, a conditional put on S3).

    A second run of the stage raises :class:`StageBusy` naming the holder. A lock left by a process of this host that
    no longer runs, or older than ``stale_after_s``, is taken over with a warning. On other object stores (gs://,
    abfss://) there is no lock: the orchestrator must not start two runs (the Airflow DAG allows one active run), and a
    warning says so.
    """
    store = _lock_store(lake_uri, stage)
    if store is None:
        log.warning("%s: no lock on a lake in this object store (%s); relying on the scheduler to run one %s at a time",
                    stage, lake_uri.split("://", 1)[0], stage)
        yield
        return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id, "since": _now().isoformat(),
          "token": uuid.uuid4().hex}  # tells this holder from a later one with the same run_id
    acquired, holder = False, {}
    for _ in range(2):  # the second try only after taking over a stale lock
        if store.create(json.dumps(me)):
            acquired = True
            break
        holder, age = store.read()
        dead = holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"])
        if not (dead or age > stale_after_s):
            break
        log.warning("%s: taking over a stale lock %s (%s)", stage, store.name, holder or "unreadable")
        store.delete()
    if not acquired:
        raise StageBusy(f"another {stage} run holds {store.name}: run {holder.get('run_id')!r}, pid {holder.get('pid')} "
                        f"on {holder.get('host')}, since {holder.get('since')}. Wait for it to finish; if it was killed "
                        "on another host, delete the lock")
    try:
        yield
    finally:
        if store.read()[0].get("token") == me["token"]:  # ours still (not taken over as stale meanwhile)
            store.delete()


@contextmanager
def _session_settings(spark) -> Iterator[None]:
    """Put back the session settings a run may change (shuffle partitions and adaptive execution:
    crossrec.io.spark.size_shuffles; the compaction threshold: crossrec.io.maintain) when it ends."""
    from crossrec.io.spark import ADAPTIVE, CONFIGURED_ADAPTIVE, CONFIGURED_SHUFFLES, MIN_FILE_SIZE, SHUFFLE_PARTITIONS

    keys = (SHUFFLE_PARTITIONS, CONFIGURED_SHUFFLES, ADAPTIVE, CONFIGURED_ADAPTIVE, MIN_FILE_SIZE)
    saved = {k: spark.conf.get(k, None) for k in keys} if spark is not None else {}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


@contextmanager
def stage_run(spark, cfg, stage: str, outputs: list[str]) -> Iterator[StageRun]:
    """Run a stage under the ledger: lock, roll back unrecorded commits of ``outputs``, then record the run.

    The body fills ``run.reads``, ``run.writes``, ``run.accounting`` and ``run.mode``; it validates its writes before
    returning. On an exception the run is recorded as failed (its writes are never read) and the exception propagates.
    """
    run = StageRun(stage, cfg.effective_run_id(stage), cfg.run_date)
    with stage_lock(cfg.lake_uri, stage, run.run_id), _session_settings(spark):
        ledger = Ledger(cfg.lake_uri)
        ledger.ensure(cfg.lake_uri)
        if spark is not None:
            restored = rollback_unrecorded(spark, cfg.lake_uri, outputs, ledger)
            if restored:
                ledger.record(StageRun("rollback", run.run_id, cfg.run_date, mode="restore", writes=restored,
                                       details={"by": stage}), SUCCEEDED)
        run.lap("ledger read, unrecorded commits rolled back")
        try:
            yield run
        except BaseException as e:
            ledger.record(run, FAILED, error=f"{type(e).__name__}: {e}")
            raise
        ledger.record(run, SUCCEEDED)
