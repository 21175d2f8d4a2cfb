"""The Spark scoring stage: silver.interactions + a model artifact -> gold.recommendations for one run_date.

1. :func:`user_histories`: each active user's chronological history (first occurrence of each (domain,
   item)) as the artifact's global item ids; items the artifact does not know (added after training) are
   not candidates and not model input, but still count as seen.
2. :func:`score_users`: ``mapInArrow`` over ranges of user_id in batches (Arrow in and out, no pandas); each Python worker loads the artifact once
   (:func:`crossrec.score.topk.get_scorer`) and writes K rows per user and domain (PyTorch ``topk``, GPU when
   the executor has one).
3. the job writes the rows with ``replaceWhere run_date = D`` (one atomic Delta commit: a re-run replaces that
   date's partition, never doubles it; a killed run leaves the previous version intact) and validates them
   with :func:`output_expectations` (Great Expectations ``UnexpectedRowsExpectation`` queries over the batch, run once each);
4. :func:`publish` points readers at the validated table version (Delta table properties
   ``crossrec.published.*``, set in one more commit); readers never see an unvalidated run.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from functools import partial

import numpy as np

from crossrec.io.spark import default_parallelism, is_connect, is_local

log = logging.getLogger(__name__)

PUBLISHED_PREFIX = "crossrec.published."
VIEWS = ("crossrec_expected_k", "crossrec_seen")  # the temp views the output checks read
COLUMNS = ["run_date", "user_id", "domain", "rank", "item_id", "score", "model_version", "reason"]  # the contract's order


def catalog_frame(spark, folder: str):
    """The artifact's item_index.parquet as a Spark DataFrame (domain, item_id, item_idx)."""
    import pandas as pd

    from crossrec.io.lakefs import local_copy

    pdf = pd.read_parquet(f"{local_copy(folder)}/item_index.parquet", columns=["domain", "item_id", "item_idx"])
    return spark.createDataFrame(pdf, "domain string, item_id string, item_idx long")


def first_events(inter):
    """(user_id, domain, item_id, ts): each user's first interaction with each item (seconds since epoch)."""
    from pyspark.sql import functions as F

    return inter.groupBy("user_id", "domain", "item_id").agg(F.min("event_ts").cast("long").alias("ts"))


def user_histories(firsts, catalog):
    """One row per active user: ``item_idx``/``event_ts`` arrays (known items, oldest first) and
    ``n_unknown`` (seen items the artifact does not know)."""
    from pyspark.sql import functions as F

    j = firsts.join(F.broadcast(catalog), ["domain", "item_id"], "left")
    ev = F.when(F.col("item_idx").isNotNull(), F.struct(F.col("ts"), F.col("item_idx")))
    g = j.groupBy("user_id").agg(
        F.sort_array(F.collect_list(ev)).alias("h"),
        F.sum(F.col("item_idx").isNull().cast("long")).alias("n_unknown"),
    )
    return g.select("user_id", F.col("h.item_idx").alias("item_idx"), F.col("h.ts").alias("event_ts"), "n_unknown")


def popularity(firsts, catalog, n_items: int) -> np.ndarray:
    """(n_items + 1,) users per item in the current data (the fallback ranking)."""
    from pyspark.sql import functions as F

    counts = firsts.join(F.broadcast(catalog), ["domain", "item_id"]).groupBy("item_idx").count().collect()
    pop = np.zeros(n_items + 1, dtype=np.float64)
    for r in counts:
        pop[int(r["item_idx"])] = float(r["count"])
    return pop


def list_column(arr) -> list[np.ndarray]:
    """A pyarrow ListArray (possibly a slice) -> one numpy view per row (null rows -> empty)."""
    offsets = arr.offsets.to_numpy()  # (n + 1,), already shifted for a slice
    values = arr.values.to_numpy(zero_copy_only=False)  # the whole child array
    return [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _score_batches(batches, folder: str, k: int, pop: np.ndarray, run_date: dt.date, threads: int | None,
                   batch_users: int):
    """mapInArrow body: Arrow batches of (user_id, item_idx, event_ts) -> Arrow batches of recommendation rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from crossrec.score.topk import get_scorer

    scorer = get_scorer(folder, k, pop, threads)  # once per Python worker process
    for rb in batches:
        # users of similar history length share a model batch: a batch is padded to its longest history, and
        # with real (heavy-tailed) lengths one long history would otherwise pad a thousand short ones
        lengths = pc.list_value_length(rb.column("item_idx")).fill_null(0).to_numpy(zero_copy_only=False)
        rb = rb.take(pa.array(np.argsort(lengths, kind="stable")))
        for s in range(0, rb.num_rows, batch_users):
            chunk = rb.slice(s, batch_users)
            yield scorer.record_batch(chunk.column("user_id"), list_column(chunk.column("item_idx")),
                                      list_column(chunk.column("event_ts")), run_date, COLUMNS)


def scoring_partitions(spark, n_users: int, users_per_partition: int = 5000) -> int:
    """Partitions (= tasks) of the scoring stage: about ``users_per_partition`` users each, at least one per core."""
    return max(default_parallelism(spark), math.ceil(n_users / users_per_partition))


def score_users(spark, histories, folder: str, k: int, pop: np.ndarray, run_date: dt.date, n_users: int,
                schema, batch_users: int = 1024, users_per_partition: int = 5000):
    """Recommendation rows of every user in ``histories`` (lazy DataFrame with the contract's ``schema``)."""
    parallelism = default_parallelism(spark)
    parts = scoring_partitions(spark, n_users, users_per_partition)
    import os

    threads = max(1, (os.cpu_count() or 1) // parallelism) if is_local(spark) else None  # workers share one machine
    body = partial(_score_batches, folder=folder, k=k, pop=pop, run_date=run_date, threads=threads,
                   batch_users=batch_users)
    log.info("scoring %d users in %d partitions (batches of %d users, k=%d)", n_users, parts, batch_users, k)
    # by range, not hash: each task, and so each file it writes per domain, holds one contiguous range of user_id,
    # and the table's user_id statistics (its contract's stats_columns) let a reader of one user skip every other file
    return histories.select("user_id", "item_idx", "event_ts").repartitionByRange(parts, "user_id").mapInArrow(body, schema=schema)


class Progress:
    """Logs the progress of the Spark jobs of one job group while they run: tasks done, the users that
    means, rate and ETA (polls the status tracker from a driver thread). On Spark Connect, which has no status
    tracker on the client, the jobs carry the group as a tag (``spark.addTag``) and the log says only that they run."""

    def __init__(self, spark, group: str, total_users: int, every_s: float = 10.0, tasks: int | None = None):
        """``tasks``: the scoring stage's task count (:func:`scoring_partitions`), which tells it apart from
        the other stages of the group; None = the started stage with the most tasks."""
        self.spark, self.group, self.total, self.every, self.tasks = spark, group, total_users, every_s, tasks
        self.sc = None if is_connect(spark) else spark.sparkContext
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"progress-{group}")

    def __enter__(self) -> "Progress":
        if self.sc is None:
            self.spark.addTag(self.group)
        else:
            self.sc.setJobGroup(self.group, f"crossrec {self.group}")
        self.t0 = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.sc is None:
            self.spark.removeTag(self.group)
        else:
            self.sc.setLocalProperty("spark.jobGroup.id", None)

    def fraction(self) -> float | None:
        """Completed share of the scoring stage, or None before it starts (and always on Spark Connect). Stages
        that have not started are ignored: a stage skipped because its shuffle output is reused (the histories are
        cached) never runs a task, and counting it kept the share at 0 for the whole run."""
        if self.sc is None:
            return None
        st = self.sc.statusTracker()
        best = None  # (numTasks, stageId, completed)
        for job in st.getJobIdsForGroup(self.group):
            info = st.getJobInfo(job)
            for sid in (info.stageIds if info else []):
                s = st.getStageInfo(sid)
                if not s or not s.numTasks or (s.numActiveTasks + s.numCompletedTasks) == 0:
                    continue
                if self.tasks is not None and s.numTasks != self.tasks:
                    continue
                if best is None or (s.numTasks, sid) > best[:2]:
                    best = (s.numTasks, sid, s.numCompletedTasks)
        return None if best is None else best[2] / best[0]

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            f = self.fraction()
            if f is None or f == 0:
                log.info("%s: running, %.0f s (%d users)", self.group, time.time() - self.t0, self.total)
                continue
            el = time.time() - self.t0
            done = int(f * self.total)
            log.info("%s: ~%d/%d users scored (%.0f users/s, ETA %.0fs)", self.group, done, self.total,
                     done / el, el * (1 - f) / f)


def output_expectations(k: int) -> list:
    """Cross-row checks of one run's recommendations (GE ``UnexpectedRowsExpectation``; a check passes when
    its query returns no row). They read the temp views :func:`register_check_views` registers (:data:`VIEWS`).

    Each check is one shuffle of the batch, so they are few: five queries became these three
    (gold.recommendations' validation at 100k users: 157-164 s -> 138-157 s). Stock GE runs each query twice
    (its row count, then its first rows); :func:`crossrec.quality.validate.unexpected_rows_check` runs it once
    when only pass/fail is asked, and reports the first offending rows when a check fails."""
    from crossrec.quality.validate import unexpected_rows_check

    q = {
        # one join both ways: an active user or domain short of rows, and a (user, domain) that should have none
        "K rows per (user, domain), fewer only when the domain has fewer unseen items; every active user present, "
        "no other user":
            """SELECT COALESCE(e.user_id, b.user_id) AS user_id, COALESCE(e.domain, b.domain) AS domain,
               COALESCE(e.expected, 0) AS expected, COALESCE(b.n, 0) AS n FROM crossrec_expected_k e
               FULL OUTER JOIN (SELECT user_id, domain, COUNT(*) AS n FROM {batch} GROUP BY user_id, domain) b
               ON e.user_id = b.user_id AND e.domain = b.domain WHERE COALESCE(b.n, 0) != COALESCE(e.expected, 0)""",
        # one sort of the batch: rank = position in rank order (so 1..n, no gap or repeat), scores never rising
        "ranks are 1..n within each (user, domain) and scores do not increase with rank":
            """SELECT user_id, domain, `rank`, score, prev FROM (SELECT user_id, domain, `rank`, score,
               ROW_NUMBER() OVER w AS pos, LAG(score) OVER w AS prev FROM {batch}
               WINDOW w AS (PARTITION BY user_id, domain ORDER BY `rank`)) WHERE `rank` != pos OR prev < score""",
        "no item the user already has":
            """SELECT b.user_id, b.domain, b.item_id FROM {batch} b JOIN crossrec_seen s
               ON b.user_id = s.user_id AND b.domain = s.domain AND b.item_id = s.item_id""",
    }
    return [unexpected_rows_check(sql, text) for text, sql in q.items()]


def exhausted_users(firsts, catalog):
    """(user_id, domain) pairs where the user already has every item of the domain the model knows."""
    from pyspark.sql import functions as F

    sizes = catalog.groupBy("domain").agg(F.count("*").alias("n_d"))
    seen = firsts.join(F.broadcast(catalog), ["domain", "item_id"]).groupBy("user_id", "domain").agg(F.count("*").alias("seen"))
    return seen.join(F.broadcast(sizes), "domain").where(F.col("seen") >= F.col("n_d")).select("user_id", "domain")


def register_check_views(spark, firsts, catalog, k: int) -> None:
    """Temp views the output checks read: what each active user should get per domain (``crossrec_expected_k``),
    and the items they have (``crossrec_seen``)."""
    from pyspark.sql import functions as F

    sizes = catalog.groupBy("domain").agg(F.count("*").alias("n_d"))
    known_seen = firsts.join(F.broadcast(catalog), ["domain", "item_id"]).groupBy("user_id", "domain").agg(
        F.count("*").alias("seen"))
    users = firsts.select("user_id").distinct()
    expected = (users.crossJoin(F.broadcast(sizes))
                .join(known_seen, ["user_id", "domain"], "left")
                .select("user_id", "domain", F.least(F.lit(k), F.col("n_d") - F.coalesce(F.col("seen"), F.lit(0))).alias("expected"))
                .where("expected > 0"))
    expected.createOrReplaceTempView("crossrec_expected_k")
    firsts.select("user_id", "domain", "item_id").createOrReplaceTempView("crossrec_seen")


def validate_run(spark, cfg, version: int, run_date: dt.date, raise_on_failure: bool = True):
    """Check one run_date's rows of gold.recommendations at table ``version``: the contract suite plus
    :func:`output_expectations`, against the artifact named in the rows and the newest silver tables.
    Returns (ValidationReport, model_version, k)."""
    from pyspark.sql import functions as F

    from crossrec.data.rawformat import RawFormatError
    from crossrec.io.delta import read_table
    from crossrec.io.registry import artifact_folder
    from crossrec.io.runs import pinned_versions
    from crossrec.quality.contracts import load_contract
    from crossrec.quality.validate import Validator

    path = cfg.table_path("gold.recommendations")
    rows = read_table(spark, path, version).where(F.col("run_date") == F.lit(run_date))
    meta = rows.agg(F.count("*").alias("n"), F.max("rank").alias("k"), F.collect_set("model_version").alias("mv")).first()
    if not meta["n"]:
        raise RawFormatError(f"gold.recommendations v{version} has no rows for run_date {run_date}")
    if len(meta["mv"]) != 1:
        raise RawFormatError(f"run_date {run_date} at v{version} mixes model versions {sorted(meta['mv'])}")
    model_version, k = meta["mv"][0], int(meta["k"])
    catalog = catalog_frame(spark, artifact_folder(cfg.lake_uri, model_version, cfg.mlflow_tracking_uri))
    silver = pinned_versions(spark, cfg.lake_uri, ["silver.interactions", "silver.items"])  # what score read
    inter = read_table(spark, cfg.table_path("silver.interactions"), silver["silver.interactions"])
    register_check_views(spark, first_events(inter), catalog, k)
    items = read_table(spark, cfg.table_path("silver.items"), silver["silver.items"])
    domains = sorted(r[0] for r in catalog.select("domain").distinct().collect())
    report = Validator(cfg.reports_root, cfg.effective_run_id("score")).check(
        load_contract("gold.recommendations"), rows, params={"domains": domains, "k": k}, expected_rows=int(meta["n"]),
        references={"silver.items": items}, version=version, extra_expectations=output_expectations(k),
        raise_on_failure=raise_on_failure)
    return report, model_version, k


def published(spark, path: str) -> dict:
    """The ``crossrec.published.*`` properties of the table ({} when nothing was published)."""
    from crossrec.io.delta import table_properties

    props = table_properties(spark, path)
    return {k[len(PUBLISHED_PREFIX):]: v for k, v in props.items() if k.startswith(PUBLISHED_PREFIX)}


class PublishBackwards(ValueError):
    """Publishing a run date older than the one published would move readers back in time."""


def publish(spark, path: str, version: int, run_date: dt.date, model_version: str, k: int, force: bool = False) -> int:
    """Point readers at ``version`` of gold.recommendations (table properties; one commit); returns the
    version that commit made. Only forward in time: a run date older than the published one raises
    :class:`PublishBackwards` unless ``force`` (a backfill is written and checked, readers keep the newer run)."""
    from crossrec.io.delta import latest_version, set_table_properties

    current = published(spark, path).get("run_date")
    if current and dt.date.fromisoformat(current) > run_date and not force:
        raise PublishBackwards(f"gold.recommendations: run date {run_date} is older than the published {current}; "
                               "it stays written and checked but unpublished (pass --force to publish it anyway)")
    props = {"version": str(version), "run_date": run_date.isoformat(), "model_version": model_version, "k": str(k),
             "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    set_table_properties(spark, path, {PUBLISHED_PREFIX + key: value for key, value in props.items()})
    new = latest_version(path)
    log.info("published gold.recommendations v%d (run_date %s, model %s) -> table v%d", version, run_date, model_version, new)
    return new


__all__ = ["catalog_frame", "first_events", "user_histories", "popularity", "score_users", "scoring_partitions", "Progress",
           "output_expectations", "exhausted_users", "list_column", "register_check_views", "validate_run", "published", "publish", "PublishBackwards", "PUBLISHED_PREFIX"]
