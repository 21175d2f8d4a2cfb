"""The Spark scoring stage: silver.interactions + a model artifact -> gold.recommendations for one run_date.

1. :func:`user_histories`: each active user's chronological history (first occurrence of each (domain,
   item)) as the artifact's global item ids; items the artifact does not know (added after training) are
   not candidates and not model input, but still count as seen.
2. :func:`score_users`: ``mapInArrow`` over ranges of user_id in batches (Arrow in and out, no pandas); each Python worker loads the artifact once
   (:func:`crossrec.score.topk.get_scorer`) and writes K rows per user and domain (PyTorch ``topk``, GPU when
   the executor has one).
3. :func:`run_score` (the ``crossrec score`` stage) writes the rows with ``replaceWhere run_date = D`` (one atomic
   Delta commit: a re-run replaces that date's partition, never doubles it; a killed run leaves the previous version
   intact), accounts for every active user per domain, and validates the run with :func:`validate_run`
   (:func:`output_expectations`: Great Expectations ``UnexpectedRowsExpectation`` queries over the batch, run once each);
4. :func:`publish` points readers at the validated table version (Delta table properties
   ``crossrec.published.*``, set in one more commit); readers never see an unvalidated run.

This module is imported by the Python workers that run :func:`score_users`' ``mapInArrow`` body: the stage's
Spark, Delta and Great Expectations imports stay inside the functions that need them.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from crossrec import columns as C
from crossrec.io.spark import ROWS_PER_PARTITION, default_parallelism, is_connect, is_local, size_shuffles

if TYPE_CHECKING:
    from crossrec.io.accounting import AccountingRow
    from crossrec.io.config import CrossrecConfig
    from crossrec.io.runs import StageRun

log = logging.getLogger(__name__)

STAGE = "score"
TABLE = "gold.recommendations"
PUBLISHED_PREFIX = "crossrec.published."
VIEWS = ("crossrec_expected_k", "crossrec_seen")  # the temp views the output checks read
COLUMNS = [C.RUN_DATE, C.USER_ID, C.DOMAIN, C.RANK, C.ITEM_ID, C.SCORE, C.MODEL_VERSION, C.REASON, C.REASON_KIND,
           C.REASON_ENTITY]  # the contract's order


def catalog_frame(spark, folder: str):
    """The artifact's item_index.parquet as a Spark DataFrame (domain, item_id, item_idx)."""
    import pandas as pd

    from crossrec.io.lakefs import local_copy

    pdf = pd.read_parquet(f"{local_copy(folder)}/item_index.parquet", columns=[C.DOMAIN, C.ITEM_ID, C.ITEM_IDX])
    return spark.createDataFrame(pdf, "domain string, item_id string, item_idx long")


def first_events(inter):
    """(user_id, domain, item_id, ts): each user's first interaction with each item (seconds since epoch)."""
    from pyspark.sql import functions as F

    return inter.groupBy(C.USER_ID, C.DOMAIN, C.ITEM_ID).agg(F.min(C.EVENT_TS).cast("long").alias("ts"))


def user_histories(inter, catalog):
    """One row per active user of ``inter`` (silver.interactions): ``item_idx``/``event_ts`` arrays (the first event of
    each known item, oldest first) and ``n_unknown`` (seen items the artifact does not know).

    One shuffle: the events are partitioned by user_id, so the first-event aggregate, the catalog lookup (broadcast)
    and the per-user collect all run in the partition that holds the user. (Grouped by (user, domain, item) first,
    each user's rows would be spread over every partition and shuffled again to be collected.)"""
    from pyspark.sql import functions as F

    j = first_events(inter.repartition(C.USER_ID)).join(F.broadcast(catalog), [C.DOMAIN, C.ITEM_ID], "left")
    ev = F.when(F.col(C.ITEM_IDX).isNotNull(), F.struct(F.col("ts"), F.col(C.ITEM_IDX)))
    g = j.groupBy(C.USER_ID).agg(
        F.sort_array(F.collect_list(ev)).alias("h"),
        F.sum(F.col(C.ITEM_IDX).isNull().cast("long")).alias("n_unknown"),
    )
    return g.select(C.USER_ID, F.col("h.item_idx").alias(C.ITEM_IDX), F.col("h.ts").alias(C.EVENT_TS), "n_unknown")


def known_items(hist):
    """(user_id, item_idx): one row per user and known item of :func:`user_histories`' rows."""
    from pyspark.sql import functions as F

    return hist.select(C.USER_ID, F.explode(C.ITEM_IDX).alias(C.ITEM_IDX))


def popularity(hist, n_items: int) -> np.ndarray:
    """(n_items + 1,) users per item in the current data (the fallback ranking), from :func:`user_histories`' rows
    (each item occurs once in a user's history)."""
    counts = known_items(hist).groupBy(C.ITEM_IDX).count().collect()
    pop = np.zeros(n_items + 1, dtype=np.float64)
    for r in counts:
        pop[int(r[C.ITEM_IDX])] = float(r["count"])
    return pop


def list_column(arr) -> list[np.ndarray]:
    """A pyarrow ListArray (possibly a slice) -> one numpy view per row (null rows -> empty)."""
    offsets = arr.offsets.to_numpy()  # (n + 1,), already shifted for a slice
    values = arr.values.to_numpy(zero_copy_only=False)  # the whole child array
    return [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def score_batches(batches, folder: str, k: int, pop: np.ndarray, run_date: dt.date, threads: int | None,
                  batch_users: int):
    """The score stage's ``mapInArrow`` body: Arrow batches of (user_id, item_idx, event_ts) -> Arrow batches of
    gold.recommendations rows (:data:`COLUMNS`), ``batch_users`` users per model batch. Public so that a benchmark or
    a test can run exactly the stage's scoring without Spark."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from crossrec.score.topk import get_scorer

    scorer = get_scorer(folder, k, pop, threads)  # once per Python worker process
    for rb in batches:
        # users of similar history length share a model batch: a batch is padded to its longest history, and
        # with real (heavy-tailed) lengths one long history would otherwise pad a thousand short ones
        lengths = pc.list_value_length(rb.column(C.ITEM_IDX)).fill_null(0).to_numpy(zero_copy_only=False)
        rb = rb.take(pa.array(np.argsort(lengths, kind="stable")))
        for s in range(0, rb.num_rows, batch_users):
            chunk = rb.slice(s, batch_users)
            yield scorer.record_batch(chunk.column(C.USER_ID), list_column(chunk.column(C.ITEM_IDX)),
                                      list_column(chunk.column(C.EVENT_TS)), run_date, COLUMNS)


# users a scoring task takes: each task has a fixed cost (its Python stream, three Parquet files, their Delta stats),
# which at 5,000 users a task was a sixth of the stage; at 20,000 a task's output rows still stream batch by batch
USERS_PER_PARTITION = 20_000


def scoring_partitions(spark, n_users: int, users_per_partition: int = USERS_PER_PARTITION) -> int:
    """Partitions (= tasks) of the scoring stage: about ``users_per_partition`` users each, at least one per core."""
    return max(default_parallelism(spark), math.ceil(n_users / users_per_partition))


def score_users(spark, histories, folder: str, k: int, pop: np.ndarray, run_date: dt.date, n_users: int,
                schema, batch_users: int = 1024, users_per_partition: int = USERS_PER_PARTITION):
    """Recommendation rows of every user in ``histories`` (lazy DataFrame with the contract's ``schema``)."""
    parallelism = default_parallelism(spark)
    parts = scoring_partitions(spark, n_users, users_per_partition)
    threads = max(1, (os.cpu_count() or 1) // parallelism) if is_local(spark) else None  # workers share one machine
    body = partial(score_batches, folder=folder, k=k, pop=pop, run_date=run_date, threads=threads,
                   batch_users=batch_users)
    log.info("scoring %d users in %d partitions (batches of %d users, k=%d)", n_users, parts, batch_users, k)
    # by range, not hash: each task, and so each file it writes per domain, holds one contiguous range of user_id,
    # and the table's user_id statistics (its contract's stats_columns) let a reader of one user skip every other file
    return histories.select(C.USER_ID, C.ITEM_IDX, C.EVENT_TS).repartitionByRange(parts, C.USER_ID).mapInArrow(body, schema=schema)


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


def exhausted_users(hist, catalog):
    """(user_id, domain) pairs where the user already has every item of the domain the model knows (from
    :func:`user_histories`' rows)."""
    from pyspark.sql import functions as F

    sizes = catalog.groupBy(C.DOMAIN).agg(F.count("*").alias("n_d"))
    seen = (known_items(hist).join(F.broadcast(catalog.select(C.ITEM_IDX, C.DOMAIN)), C.ITEM_IDX)
            .groupBy(C.USER_ID, C.DOMAIN).agg(F.count("*").alias("seen")))
    return seen.join(F.broadcast(sizes), C.DOMAIN).where(F.col("seen") >= F.col("n_d")).select(C.USER_ID, C.DOMAIN)


def register_check_views(spark, firsts, catalog, k: int) -> None:
    """Temp views the output checks read: what each active user should get per domain (``crossrec_expected_k``),
    and the items they have (``crossrec_seen``)."""
    from pyspark.sql import functions as F

    sizes = catalog.groupBy(C.DOMAIN).agg(F.count("*").alias("n_d"))
    known_seen = firsts.join(F.broadcast(catalog), [C.DOMAIN, C.ITEM_ID]).groupBy(C.USER_ID, C.DOMAIN).agg(
        F.count("*").alias("seen"))
    users = firsts.select(C.USER_ID).distinct()
    expected = (users.crossJoin(F.broadcast(sizes))
                .join(known_seen, [C.USER_ID, C.DOMAIN], "left")
                .select(C.USER_ID, C.DOMAIN, F.least(F.lit(k), F.col("n_d") - F.coalesce(F.col("seen"), F.lit(0))).alias("expected"))
                .where("expected > 0"))
    expected.createOrReplaceTempView("crossrec_expected_k")
    firsts.select(C.USER_ID, C.DOMAIN, C.ITEM_ID).createOrReplaceTempView("crossrec_seen")


def validate_run(spark, cfg, version: int, run_date: dt.date, raise_on_failure: bool = True, folder: str | None = None):
    """Check one run_date's rows of gold.recommendations at table ``version``: the contract suite plus
    :func:`output_expectations`, against the artifact the rows were scored with and the newest silver tables.
    ``folder``: that artifact (the score stage passes the one it loaded, which may be a folder outside the lake and
    the registry); None = resolved from the rows' model_version (:func:`crossrec.io.registry.artifact_folder`).
    Returns (ValidationReport, model_version, k)."""
    from pyspark.sql import functions as F

    from crossrec.data.rawformat import RawFormatError
    from crossrec.io.delta import read_table
    from crossrec.io.registry import artifact_folder
    from crossrec.io.runs import pinned_versions
    from crossrec.quality.contracts import load_contract
    from crossrec.quality.validate import Validator

    path = cfg.table_path("gold.recommendations")
    rows = read_table(spark, path, version).where(F.col(C.RUN_DATE) == F.lit(run_date))
    meta = rows.agg(F.count("*").alias("n"), F.max(C.RANK).alias("k"), F.collect_set(C.MODEL_VERSION).alias("mv")).first()
    if not meta["n"]:
        raise RawFormatError(f"gold.recommendations v{version} has no rows for run_date {run_date}")
    if len(meta["mv"]) != 1:
        raise RawFormatError(f"run_date {run_date} at v{version} mixes model versions {sorted(meta['mv'])}")
    model_version, k = meta["mv"][0], int(meta["k"])
    if folder is None:
        folder = artifact_folder(cfg.lake_uri, model_version, cfg.mlflow_tracking_uri)
    elif model_version != os.path.basename(folder.rstrip("/")):
        raise RawFormatError(f"run_date {run_date} at v{version} was scored with model {model_version}, not {folder}")
    catalog = catalog_frame(spark, folder)
    silver = pinned_versions(spark, cfg.lake_uri, ["silver.interactions", "silver.items"])  # what score read
    inter = read_table(spark, cfg.table_path("silver.interactions"), silver["silver.interactions"])
    register_check_views(spark, first_events(inter), catalog, k)
    items = read_table(spark, cfg.table_path("silver.items"), silver["silver.items"])
    domains = sorted(r[0] for r in catalog.select(C.DOMAIN).distinct().collect())
    validator = Validator(cfg.reports_root, cfg.effective_run_id("score"))
    report = validator.check(
        load_contract("gold.recommendations"), rows, params={"domains": domains, "k": k}, expected_rows=int(meta["n"]),
        references={"silver.items": items}, version=version, extra_expectations=output_expectations(k),
        raise_on_failure=raise_on_failure)
    validator.finish()
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


def run_score(cfg: CrossrecConfig, spark, k: int = 10, version: str | None = None, publish: bool = True,
              batch_users: int = 1024, users_per_partition: int = USERS_PER_PARTITION) -> dict:
    """Score every active user, write and validate the run_date's partition, record the run in ops.runs, publish it
    (not when a newer run date is published: a backfill is written and checked only); returns a summary
    ``{run_date, model_version, users, rows, table_version, published, score_s, users_per_s, wall_s}``.

    ``version`` names the model artifact (:func:`crossrec.io.registry.artifact_folder`; None = the registry's
    champion). Raises :class:`~crossrec.data.rawformat.RawFormatError` on bad arguments or missing input, and
    :class:`~crossrec.io.accounting.AccountingError` when an active user lacks recommendations in a domain.
    """
    from crossrec.io.runs import stage_run

    with stage_run(spark, cfg, STAGE, [TABLE]) as stage:
        return _score(cfg, spark, stage, k, version, publish, batch_users, users_per_partition)


def _score(cfg: CrossrecConfig, spark, stage: StageRun, k: int, version: str | None, publish_run: bool, batch_users: int,
           users_per_partition: int) -> dict:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from crossrec.data.rawformat import RawFormatError
    from crossrec.io.accounting import check_balanced, format_accounting, write_accounting
    from crossrec.io.delta import read_table, table_exists, write_table
    from crossrec.io.registry import artifact_folder
    from crossrec.io.runs import pinned_versions
    from crossrec.quality.contracts import load_contract

    if k < 1:
        raise RawFormatError(f"--k must be >= 1, got {k}")
    if publish_run and not cfg.validate:
        raise RawFormatError("--no-validate needs --no-publish: only validated runs are published (`crossrec publish` checks first)")
    t0 = time.time()
    folder = artifact_folder(cfg.lake_uri, version, cfg.mlflow_tracking_uri)
    model_version = os.path.basename(folder.rstrip("/"))
    run_date = dt.date.fromisoformat(cfg.run_date)
    inter_path = cfg.table_path("silver.interactions")
    if not table_exists(spark, inter_path):
        raise RawFormatError(f"silver.interactions does not exist at {inter_path}: run `crossrec clean` first")
    silver_v = pinned_versions(spark, cfg.lake_uri, ["silver.interactions"])["silver.interactions"]
    stage.reads = {"silver.interactions": silver_v}
    stage.details.update(model_version=model_version, model_folder=folder, k=k)
    inter = read_table(spark, inter_path, silver_v)
    catalog = catalog_frame(spark, folder).persist()
    n_items = catalog.count()
    domains = sorted(r[0] for r in catalog.select(C.DOMAIN).distinct().collect())
    size_shuffles(spark, inter.count(), ROWS_PER_PARTITION)  # a count Delta answers from its log
    hist = user_histories(inter, catalog).persist(StorageLevel.MEMORY_AND_DISK)
    n_users = hist.count()
    if n_users == 0:
        raise RawFormatError(f"silver.interactions v{silver_v} has no users to score")
    stats = hist.agg(F.sum((F.size(C.ITEM_IDX) == 0).cast("long")).alias("fallback"),
                     F.sum("n_unknown").alias("unknown")).first()
    log.info("scoring with %s (%d items, domains %s): %d active users (silver.interactions v%d), %d without known "
             "history (popularity), %d seen items unknown to the model", model_version, n_items, domains, n_users,
             silver_v, stats["fallback"], stats["unknown"])
    pop = popularity(hist, n_items)

    contract = load_contract(TABLE)
    recs = score_users(spark, hist, folder, k, pop, run_date, n_users, contract.spark_schema(), batch_users, users_per_partition)
    path = cfg.table_path(TABLE)
    with Progress(spark, STAGE, n_users, tasks=scoring_partitions(spark, n_users, users_per_partition)):
        t_score = time.time()
        version_written = write_table(spark, recs, contract, path, "overwrite", replace_where=f"run_date = '{run_date.isoformat()}'")
        score_s = time.time() - t_score
    written = read_table(spark, path, version_written).where(F.col(C.RUN_DATE) == F.lit(run_date))
    per_domain = {r[C.DOMAIN]: r for r in written.groupBy(C.DOMAIN).agg(
        F.count("*").alias("rows"), F.countDistinct(C.USER_ID).alias("users"),
        F.sum((F.col(C.REASON) == "popularity").cast("long")).alias("fallback_rows"),
        F.sum((F.col(C.REASON_KIND) == "shared_entity").cast("long")).alias("shared_entity_rows")).collect()}
    n_rows = sum(r["rows"] for r in per_domain.values())
    log.info("scored %d users in %.1fs (%.0f users/s): %d rows", n_users, score_s, n_users / max(score_s, 1e-9), n_rows)
    accounting = _accounting(hist, catalog, domains, per_domain, n_users, model_version)

    if cfg.validate:
        report, _, _ = validate_run(spark, cfg, version_written, run_date, folder=folder)
        stage.details["data_docs"] = report.docs_url
    print(format_accounting(accounting))
    check_balanced(accounting)  # every active user has recommendations in every domain
    write_accounting(spark, cfg, cfg.effective_run_id(STAGE), accounting)
    stage.writes, stage.accounting = {TABLE: version_written}, accounting
    stage.details["validated"] = bool(cfg.validate)
    published_v = None
    if publish_run:
        try:
            published_v = publish(spark, path, version_written, run_date, model_version, k)
            stage.writes[TABLE] = published_v
        except PublishBackwards as e:
            log.warning("%s", e)
            publish_run = False
    for frame in (catalog, hist):
        frame.unpersist()
    summary = {"run_date": run_date.isoformat(), "model_version": model_version, "users": n_users, "rows": n_rows,
               "table_version": version_written, "published": publish_run, "score_s": round(score_s, 1),
               "users_per_s": round(n_users / max(score_s, 1e-9), 1), "wall_s": round(time.time() - t0, 1)}
    print(f"gold.recommendations v{version_written}: {n_rows:,} rows for {n_users:,} users x {len(domains)} domains "
          f"(k={k}), {summary['users_per_s']:.0f} users/s; "
          + (f"published (table v{published_v})" if publish_run else "not published (--no-publish)"))
    return summary


def _accounting(hist, catalog, domains: list[str], per_domain: dict, n_users: int,
                model_version: str) -> list[AccountingRow]:
    """One AccountingRow per domain, in users: every active user has rows there, or is withheld because they already
    have every item of the domain (counted as withheld, not lost)."""
    from crossrec.io.accounting import AccountingRow

    exhausted = {r[C.DOMAIN]: r["count"] for r in exhausted_users(hist, catalog).groupBy(C.DOMAIN).count().collect()}
    accounting = []
    for d in domains:
        r = per_domain.get(d)
        row = AccountingRow(STAGE, TABLE, d, rows_in=n_users, rows_out=int(r["users"]) if r else 0,
                            withheld=int(exhausted.get(d, 0)))
        row.details = {"unit": "users (withheld: nothing unseen left in the domain)", "rows": int(r["rows"]) if r else 0,
                       "fallback_rows": int(r["fallback_rows"]) if r else 0,
                       "shared_entity_rows": int(r["shared_entity_rows"] or 0) if r else 0, "model_version": model_version}
        accounting.append(row)
    return accounting


__all__ = ["run_score", "score_batches", "STAGE", "TABLE", "USERS_PER_PARTITION", "catalog_frame", "first_events",
           "user_histories", "known_items", "popularity", "score_users", "scoring_partitions", "Progress", "output_expectations",
           "exhausted_users", "list_column", "register_check_views", "validate_run", "published", "publish",
           "PublishBackwards", "PUBLISHED_PREFIX"]
