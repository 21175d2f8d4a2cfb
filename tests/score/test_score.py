"""The score stage, the output checks, publishing and the Spark-free readers, on a real small lake.

The lake (``scored_lake`` in conftest.py) is built once with the real jobs (generate -> ingest -> clean ->
features -> evaluate -> score); the model artifact is an untrained CrossDomainTransformer over that lake's
catalog written in the trainer's artifact layout (scoring does not care whether the weights are good;
training has its own tests).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossrec.io.readers import nearest_items, published_run, pseudonymize, read_recommendations, read_table  # noqa: E402
from crossrec_jobs import score as score_job  # noqa: E402
from support import TEST_KEY  # noqa: E402

from support import SCORE_K as K  # noqa: E402

pytestmark = pytest.mark.spark
DAY1, DAY2, DAY3 = "2025-01-01", "2025-01-02", "2025-01-03"


@pytest.fixture(scope="module")
def lake(scored_lake):
    return scored_lake


def seen_items(lake: Path):
    inter = read_table(str(lake), "silver.interactions", columns=["user_id", "domain", "item_id"])
    return set(zip(inter.user_id, inter.domain, inter.item_id)), inter


def test_every_active_user_gets_k_unseen_items_per_domain_ranked_by_score(lake):
    recs = read_recommendations(str(lake["lake"]))
    seen, inter = seen_items(lake["lake"])
    items = read_table(str(lake["lake"]), "silver.items", columns=["domain", "item_id"])
    assert set(recs.columns) >= {"run_date", "user_id", "domain", "rank", "item_id", "score", "model_version", "reason",
                                 "reason_kind", "reason_entity"}
    assert set(recs.reason_kind) <= {"history_item", "shared_entity", "popularity"}
    assert ((recs.reason_kind == "shared_entity") == recs.reason_entity.notna()).all()
    assert str(recs.run_date.iloc[0]) == DAY1 and set(recs.model_version) == {"20250101-test0001"}
    assert set(recs.user_id) == set(inter.user_id), "every active user is present"
    per = recs.groupby(["user_id", "domain"])
    n_items = items.groupby("domain").size()
    for (user, domain), g in per:
        n_seen = sum(1 for u, d, _ in seen if u == user and d == domain)
        assert len(g) == min(K, n_items[domain] - n_seen), (user, domain)
        assert g["rank"].tolist() == list(range(1, len(g) + 1))
        assert (np.diff(g.score.values) <= 1e-12).all(), "scores non-increasing by rank"
    assert len(per) == recs.user_id.nunique() * 2, "every user has rows in both domains"
    assert not any((u, d, i) in seen for u, d, i in zip(recs.user_id, recs.domain, recs.item_id)), "no seen item"
    # the reason is one of the user's own history items, in any domain
    hist = {}
    for u, d, i in seen:
        hist.setdefault(u, set()).add(f"{d}:{i}")
    assert all(r in hist[u] for u, r in zip(recs.user_id, recs.reason)), "reason = an item of the user's history"
    assert (recs.reason.str.split(":").str[0] != recs.domain).any(), "some picks are supported from another domain"
    acc = read_table(str(lake["lake"]), "ops.accounting")
    acc = acc[acc.stage == "score"]
    assert set(acc.domain) == set(n_items.index)
    assert (acc.rows_in == acc.rows_out).all() and (acc.rows_in == recs.user_id.nunique()).all()


def test_rerun_for_the_same_date_replaces_only_that_partition(lake, spark):
    args = lake["args"]
    before = read_table(str(lake["lake"]), "gold.recommendations")
    assert score_job.main([*args, "--run-date", DAY2, "--k", str(K), "--no-validate", "--no-publish"]) == 0
    assert score_job.main([*args, "--run-date", DAY1, "--k", str(K)]) == 0  # again: replaces DAY1 only
    after = read_table(str(lake["lake"]), "gold.recommendations")
    n1 = (before.run_date.astype(str) == DAY1).sum()
    assert (after.run_date.astype(str) == DAY1).sum() == n1, "a re-run never doubles a date's rows"
    assert (after.run_date.astype(str) == DAY2).sum() == n1, "the other date's partition is untouched"
    assert not after.duplicated(["run_date", "user_id", "domain", "rank"]).any()
    assert published_run(str(lake["lake"]))["run_date"] == DAY1, "the newest published run wins"


def test_each_file_holds_one_range_of_users_with_statistics_for_user_id_only(lake):
    """The layout a per-user lookup relies on: within a (run_date, domain) partition the files' user_id ranges do
    not overlap, and Delta keeps file statistics for user_id only (the contract's stats_columns), so a reader of
    one user (read_recommendations, which prunes files by these statistics) reads one file per domain."""
    import pyarrow as pa
    from deltalake import DeltaTable

    day = "2025-01-04"
    assert score_job.main([*lake["args"], "--run-date", day, "--k", str(K), "--no-validate", "--no-publish",
                           "--users-per-partition", "30"]) == 0
    dt_ = DeltaTable(str(lake["lake"] / "gold" / "recommendations"))
    assert dt_.metadata().configuration.get("delta.dataSkippingStatsColumns") == "user_id"
    adds = pa.table(dt_.get_add_actions(flatten=True)).to_pandas()  # arro3 -> pyarrow
    assert sorted(c for c in adds.columns if c.startswith("min.")) == ["min.user_id"]
    adds = adds[adds["partition.run_date"].astype(str) == day]
    recs = read_recommendations(str(lake["lake"]), run_date=day)
    n_users = recs.user_id.nunique()
    for domain, files in adds.groupby("partition.domain"):
        files = files.sort_values("min.user_id")
        assert len(files) >= 4, f"{domain}: one file per scoring task, 120 users / 30 per task"
        assert (files["max.user_id"].values[:-1] < files["min.user_id"].values[1:]).all(), f"{domain}: ranges overlap"
        assert files.num_records.sum() == n_users * K
    for user in recs.user_id.unique()[::25]:  # statistics hold 32-character prefixes of the 64-character ids
        holding = adds[(adds["min.user_id"] <= user) & (adds["max.user_id"] >= user)]
        assert sorted(holding["partition.domain"]) == sorted(adds["partition.domain"].unique()), user
        assert len(read_recommendations(str(lake["lake"]), run_date=day, user_id=user)) == 2 * K


def test_unpublished_run_is_not_what_readers_see(lake):
    pub = published_run(str(lake["lake"]))
    # as the Airflow DAG's score task runs it: its publish task checks and publishes later
    assert score_job.main([*lake["args"], "--run-date", DAY3, "--k", str(K), "--no-validate", "--no-publish"]) == 0
    assert published_run(str(lake["lake"])) == pub
    assert set(read_recommendations(str(lake["lake"])).run_date.astype(str)) == {pub["run_date"]}
    assert set(read_recommendations(str(lake["lake"]), run_date=DAY3).run_date.astype(str)) == {DAY3}, "asked for explicitly"


def test_output_checks_catch_broken_recommendations(lake, spark):
    from pyspark.sql import functions as F

    from crossrec.io.delta import latest_version
    from crossrec.io.delta import read_table as spark_read
    from crossrec.quality.contracts import load_contract
    from crossrec.quality.validate import Validator
    from crossrec.score import stage as S

    lk = lake["lake"]
    path = str(lk / "gold" / "recommendations")
    rows = spark_read(spark, path, latest_version(path)).where(F.col("run_date") == F.lit(DAY1))
    inter = spark_read(spark, str(lk / "silver" / "interactions"))
    catalog = S.catalog_frame(spark, str(lk / "models" / "20250101-test0001"))
    S.register_check_views(spark, S.first_events(inter), catalog, K)
    domains = sorted(r[0] for r in catalog.select("domain").distinct().collect())
    one_seen = inter.select("user_id", "domain", "item_id").limit(1).first()
    broken = (rows.withColumn("score", F.when(F.col("rank") == 2, F.lit(1e9)).otherwise(F.col("score")))  # rises at rank 2
              .where(~((F.col("user_id") == one_seen.user_id) & (F.col("rank") == K))))  # a short list
    broken = broken.unionByName(rows.limit(1).withColumn("item_id", F.lit(one_seen.item_id))
                                .withColumn("user_id", F.lit(one_seen.user_id)).withColumn("domain", F.lit(one_seen.domain))
                                .withColumn("rank", F.lit(K + 1).cast("long")))  # a seen item
    stranger = rows.limit(1).withColumn("user_id", F.lit("not-an-active-user")).withColumn("rank", F.lit(1).cast("long"))
    v = Validator(str(lk / "_reports"), "test-broken")
    report = v.check(load_contract("gold.recommendations"), broken, params={"domains": domains, "k": K},
                     version=None, raise_on_failure=False, extra_expectations=S.output_expectations(K),
                     references={"silver.items": spark_read(spark, str(lk / "silver" / "items"))})
    failed = " | ".join(f["target"] for f in report.failures)
    assert not report.success
    for what in ("K rows per (user, domain)", "scores do not increase", "no item the user already has", "rank"):
        assert what in failed, (what, failed)
    # each cross-row check alone: a gap in the ranks; a user outside the active users (its one row is rank 1)
    gap = rows.where(~((F.col("user_id") == one_seen.user_id) & (F.col("domain") == one_seen.domain) & (F.col("rank") == 2)))
    for frame, what in ((gap, "ranks are 1..n"), (rows.unionByName(stranger), "no other user")):
        alone = v.check(load_contract("gold.recommendations"), frame, params={"domains": domains, "k": K}, version=None,
                        raise_on_failure=False, extra_expectations=S.output_expectations(K),
                        references={"silver.items": spark_read(spark, str(lk / "silver" / "items"))})
        assert [f["target"] for f in alone.failures if what in f["target"]], (what, alone.summary())
    assert not rows.is_cached, "the validator drops the copy of the batch GE persisted"
    good = v.check(load_contract("gold.recommendations"), rows, params={"domains": domains, "k": K},
                   raise_on_failure=False, extra_expectations=S.output_expectations(K),
                   references={"silver.items": spark_read(spark, str(lk / "silver" / "items"))})
    assert good.success, good.summary()


def test_readers_and_cli_answer_without_spark(lake, capsys):
    from crossrec.cli.main import main

    lk = str(lake["lake"])
    recs = read_recommendations(lk)
    user = recs.user_id.iloc[0]
    d0, d1 = sorted(recs.domain.unique())
    mine = read_recommendations(lk, user_id=user, domain=d1)
    assert set(mine.user_id) == {user} and set(mine.domain) == {d1} and len(mine) == K
    assert main(["recs", user, "--pseudonymized", "--lake-root", lk]) == 0
    out = capsys.readouterr().out
    assert f"[{d0}]" in out and f"[{d1}]" in out and ('because of "' in out or "same " in out)
    assert main(["recs", "no-such-user", "--pseudonymized", "--lake-root", lk]) == 2
    # raw ids are hashed with the lake's key, as clean does
    assert pseudonymize("u1", TEST_KEY.encode()) == __import__("hmac").new(TEST_KEY.encode(), b"u1", "sha256").hexdigest()
    assert pseudonymize("u1", TEST_KEY.encode(), lk) == pseudonymize("u1", TEST_KEY.encode())  # the lake's key
    from crossrec.data.pseudonym import KeyMismatchError

    with pytest.raises(KeyMismatchError, match="another key"):  # an id of another key would match nobody
        pseudonymize("u1", b"another-key-another-key", lk)

    items = read_table(lk, "silver.items", columns=["domain", "item_id", "title"])
    probe = items[items.domain == d1].iloc[3]
    near = nearest_items(lk, probe.title, domain=d1, n=5)
    assert set(near.domain) == {d1} and probe.item_id in near.item_id.tolist()
    assert (np.diff(near.similarity.values) <= 1e-6).all()
    assert main(["query", probe.title, "--lake-root", lk, "-n", "3"]) == 0
    assert "nearest items" in capsys.readouterr().out
    with pytest.raises(LookupError, match="unknown domain"):
        nearest_items(lk, "anything", domain="nope")


@pytest.mark.slow
def test_killed_score_job_leaves_previous_run_readable_and_rerun_completes(lake):
    lk = lake["lake"]
    path = str(lk / "gold" / "recommendations")
    from deltalake import DeltaTable

    v_before = DeltaTable(path).version()
    pub_before = published_run(str(lk))
    n_before = len(read_recommendations(str(lk)))
    args = [sys.executable, "-m", "crossrec_jobs.score", *lake["args"], "--run-date", DAY1, "--k", str(K),
            "--users-per-partition", "10"]
    log = lk.parent / "killed-score.log"
    local_dirs = lk.parent / "spark-local"  # a SIGKILLed JVM leaves its scratch behind: keep it in the test's folder
    local_dirs.mkdir(exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", SPARK_LOCAL_DIRS=str(local_dirs)))
        deadline = time.time() + 240
        while time.time() < deadline and "scoring" not in log.read_text() and proc.poll() is None:
            time.sleep(0.5)
        time.sleep(2.0)  # inside the write: Python workers are loading torch and the model
        assert proc.poll() is None, f"the job ended before it could be killed:\n{log.read_text()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM
        proc.wait()
    assert DeltaTable(path).version() == v_before, "a killed write commits nothing"
    assert published_run(str(lk)) == pub_before
    assert len(read_recommendations(str(lk))) == n_before, "readers still get the previous run"
    assert score_job.main([*lake["args"], "--run-date", DAY1, "--k", str(K)]) == 0
    assert len(read_recommendations(str(lk))) == n_before, "the re-run completes with the same rows"


def test_progress_follows_the_scoring_stage_not_a_skipped_larger_one(spark):
    """The score job's histories are cached, so the write job's shuffle stage is skipped: it has more tasks
    than the scoring stage and never runs one. Progress must report the stage that does run."""
    from pyspark.sql import functions as F

    from crossrec.score.stage import Progress

    agg = spark.range(0, 1000, 1, 8).groupBy((F.col("id") % 5).alias("g")).count().repartition(3)
    agg.collect()  # runs the 8-task shuffle stage; the next job reuses its output (skipped stage)
    progress = Progress(spark, "test-progress", total_users=1000, tasks=3)
    with progress:
        assert progress.fraction() is None  # nothing started in the group yet
        agg.collect()
    assert progress.fraction() == 1.0
    assert Progress(spark, "test-progress", total_users=1000).fraction() == 1.0  # without tasks: started stages only


def test_reasons_name_shared_entities_end_to_end(lake):
    """Raw data whose people and brands are shared across domains (declared entities) -> silver.item_entities -> the
    model's entity ids -> recommendations whose reason names an entity the pick shares with a history item."""
    from crossrec.model.artifact import load_artifact
    from crossrec.score.reasons import reason_kinds_report

    lk = str(lake["lake"])
    recs = read_recommendations(lk)
    ents = read_table(lk, "silver.item_entities", columns=["domain", "item_id", "entity"])
    assert ents.groupby("entity").domain.nunique().max() == 2, "the generated entities link the two domains"
    shared = recs[recs.reason_kind == "shared_entity"]
    assert len(shared) > 0 and (recs.reason_kind == "history_item").any()
    carried = set(zip(ents.domain, ents.item_id, ents.entity))
    for r in shared.head(50).itertuples():  # the entity is on the pick and on the history item named
        r_domain, r_item = r.reason.split(":", 1)
        assert (r.domain, r.item_id, r.reason_entity) in carried and (r_domain, r_item, r.reason_entity) in carried
    assert set(shared.reason_entity) <= set(load_artifact(next((lake["lake"] / "models").glob("2*"))).entities)
    report = reason_kinds_report(lk)
    assert "[shared_entity]" in report and "[history_item]" in report and "same " in report


def test_query_filters_or_boosts_by_entity(lake, capsys):
    from crossrec.cli.main import main
    from crossrec.io.readers import entity_items

    lk = str(lake["lake"])
    ents = read_table(lk, "silver.item_entities", columns=["domain", "item_id", "entity", "value"])
    person = ents[ents.entity.str.startswith("person:")].entity.value_counts().index[0]  # e.g. "person:ada berg"
    carriers = set(zip(*entity_items(lk, [person]).values.T))
    assert carriers == set(zip(ents.domain[ents.entity == person], ents.item_id[ents.entity == person]))
    assert len({d for d, _ in carriers}) == 2, "the generated people link both domains"
    value = person.split(":", 1)[1]
    assert set(zip(*entity_items(lk, ["  " + value.upper() + " "]).values.T)) >= carriers  # a bare value, any type
    near = nearest_items(lk, "anything at all", n=100, entities=[person])
    assert set(zip(near.domain, near.item_id)) == carriers, "only the entity's items"
    boosted = nearest_items(lk, "anything at all", n=len(carriers), entities=[person], entity_boost=10.0)
    assert set(zip(boosted.domain, boosted.item_id)) == carriers, "a large boost puts them first"
    assert len(nearest_items(lk, "anything at all", n=1000, entities=[person], entity_boost=0.0)) > len(carriers)
    with pytest.raises(LookupError, match="no item carries entity 'person:nobody at all'"):
        entity_items(lk, ["person:nobody at all"])
    assert main(["query", "anything", "--lake-root", lk, "-n", "3", "--entity", person]) == 0
    out = capsys.readouterr().out
    assert f"with entity {person}" in out
    assert main(["query", "anything", "--lake-root", lk, "--entity", "person:nobody at all"]) == 2


def test_histories_popularity_and_exhausted_users_from_one_shuffle(spark):
    """user_histories keeps each known item's first event in time order and counts unknown items; popularity and the
    accounting's exhausted users come from those rows; the histories take a single shuffle of the events."""
    import datetime as dt

    from crossrec.score import stage as S

    catalog = spark.createDataFrame([("d0", "a", 1), ("d0", "b", 2), ("d1", "x", 3), ("d1", "y", 4), ("d1", "z", 5)],
                                    "domain string, item_id string, item_idx long")
    t = lambda s: dt.datetime(2025, 1, 1) + dt.timedelta(seconds=s)  # noqa: E731
    inter = spark.createDataFrame(
        [("u1", "d0", "a", t(5)), ("u1", "d0", "a", t(1)), ("u1", "d0", "b", t(3)), ("u1", "d1", "x", t(2)),
         ("u1", "d1", "new", t(4)), ("u2", "d1", "y", t(1))],
        "user_id string, domain string, item_id string, event_ts timestamp")
    hist = S.user_histories(inter, catalog)
    rows = {r.user_id: r for r in hist.collect()}
    assert rows["u1"].item_idx == [1, 3, 2] and rows["u1"].n_unknown == 1, "first events oldest first, unknown counted"
    assert [b - a for a, b in zip(rows["u1"].event_ts, rows["u1"].event_ts[1:])] == [1, 1], "the first event's time"
    assert rows["u2"].item_idx == [4] and rows["u2"].n_unknown == 0
    assert S.popularity(hist, 5).tolist() == [0, 1, 1, 1, 1, 0]
    assert {tuple(r) for r in S.exhausted_users(hist, catalog).collect()} == {("u1", "d0")}
    plan = hist._jdf.queryExecution().executedPlan().toString().split("== Initial Plan ==")[0]  # as run
    assert plan.count("Exchange hashpartitioning") == 1, plan
