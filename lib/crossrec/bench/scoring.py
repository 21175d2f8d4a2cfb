"""Scoring benchmark: crossrec's score stage vs Spark MLlib ALS ``recommendForAllUsers`` vs a bare PyTorch loop.

    crossrec bench scoring --out DIR [--users 200000 --domains 3 --items-per-domain 2000 --events 20 --k 10]

The same users, items and K for all three, in one run on one Spark session:

* **crossrec score stage** -- the real stage (``crossrec.score.stage.run_score``: Spark ``mapInArrow`` over users, the
  Transformer over each user's history, seen items excluded, top-K per domain with reasons, the Delta write),
  on a lake written here: ``silver.interactions`` (``--users`` users with ``--events`` random events each) and a
  model artifact (an untrained CrossDomainTransformer, d_model 64: the weights do not change the work, with the
  warm-user score terms ``crossrec train`` fits by default (``crossrec.rerank``): co-occurrence fitted on these
  interactions, weight 1 and recency decay 0.8; text similarity, weight 2 and decay 0.6; next item from these
  interactions, weight 1; in every domain). Output checks and publishing are off: the figure is scoring + writing.
* **Spark ALS** -- implicit ALS rank 64 fitted (1 iteration, not timed) on the same interactions, then
  ``recommendForAllUsers(K)`` timed until every row is materialised (``noop`` sink). It ranks all items at once
  where crossrec ranks each domain: the same dot products, one top-K instead of one per domain.
* **bare PyTorch** -- the roofline on this machine: random (users x 64) and (items x 64) matrices, batched
  matrix product + ``torch.topk`` per domain, no Spark, no history encoding, no seen-item exclusion.
* **write floor** -- the rows crossrec wrote, cached, passed through an identity ``mapInArrow`` and written to
  Delta again: the score stage's output path with no history and no model, the ceiling for the stage.
* **model alone** -- the score stage's own ``mapInArrow`` body (:func:`crossrec.score.stage.score_batches`, the
  same artifact, histories, batches and output Arrow rows) in this process over the histories collected to the
  driver: no Spark and no write, only the model. The other ceiling: the stage cannot beat its model either.
  The artifact's load (once per worker process in the stage) is timed apart and not counted.

Writes ``DIR/scoring.json`` (records ``{system, value, unit, users, items, k}`` + ratios), ``DIR/scoring.md`` and
``DIR/scoring.png``, and prints the table.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crossrec import columns as C

log = logging.getLogger(__name__)

D_MODEL = 64  # = the ALS rank: the same factor width for all three


@dataclass(frozen=True)
class ScoringSpec:
    out_dir: str
    users: int = 200_000
    domains: int = 3
    items_per_domain: int = 2_000
    events: int = 20
    k: int = 10
    seed: int = 0


def write_lake(spark, spec: ScoringSpec, lake: Path) -> list[str]:
    """silver.interactions + silver.items + gold-free model artifact under ``lake``; returns the domains."""
    import pandas as pd
    import torch

    from crossrec.io.delta import write_table
    from crossrec.model.artifact import save_artifact
    from crossrec.model.baselines import InteractionData
    from crossrec.model.config import ModelConfig
    from crossrec.model.encoder import ItemFeatures
    from crossrec.model.transformer import CrossDomainTransformer
    from crossrec.quality.contracts import load_contract
    from crossrec.rerank.base import Catalog, TermSet
    from crossrec.rerank.cooccurrence import CooccurrenceTerm
    from crossrec.rerank.next_item import NextItemTerm
    from crossrec.rerank.text_similarity import TextSimilarityTerm

    rng = np.random.default_rng(spec.seed)
    domains = [f"d{j}" for j in range(spec.domains)]
    n = spec.users * spec.events
    dom = rng.integers(0, spec.domains, n)
    item = rng.zipf(1.3, n) % spec.items_per_domain  # popular head, long tail
    inter = pd.DataFrame({
        C.USER_ID: np.repeat(np.array([f"user{u:08d}" for u in range(spec.users)], dtype=object), spec.events),
        C.DOMAIN: np.array(domains, dtype=object)[dom],
        C.ITEM_ID: [f"i{i}" for i in item],
        C.EVENT_TYPE: "view",
        C.EVENT_TS: pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365 * 86400, n), unit="s"),
        C.WEIGHT: 1.0, C.RUN_ID: "bench", C.SOURCE: "bench-scoring",
    })
    c = load_contract("silver.interactions")
    write_table(spark, spark.createDataFrame(inter, c.spark_schema()), c, str(lake / "silver" / "interactions"), "overwrite")
    n_items = spec.domains * spec.items_per_domain
    index = pd.DataFrame({C.ITEM_IDX: np.arange(1, n_items + 1),
                          C.DOMAIN: np.repeat(domains, spec.items_per_domain),
                          C.ITEM_ID: [f"i{i}" for i in range(spec.items_per_domain)] * spec.domains,
                          C.DOMAIN_IDX: np.repeat(np.arange(spec.domains), spec.items_per_domain),
                          C.DOMAIN_ITEM_IDX: np.tile(np.arange(spec.items_per_domain), spec.domains)})
    feats = ItemFeatures.from_item_index(index.item_idx.values, index.domain_idx.values, index.domain_item_idx.values,
                                         text_emb=rng.normal(size=(n_items, 384)).astype(np.float32))
    torch.manual_seed(spec.seed)
    cfg = ModelConfig(n_items=n_items, n_domains=spec.domains, d_model=D_MODEL, n_layers=2, n_heads=2, max_seq_len=50)
    model = CrossDomainTransformer(cfg, feats)
    train = InteractionData(user=np.repeat(np.arange(spec.users), spec.events), item=dom * spec.items_per_domain + item + 1,
                            domain=dom, ts=np.zeros(n, dtype=np.int64), n_users=spec.users, n_items=n_items,
                            n_domains=spec.domains, domain_items=[index.item_idx.values[index.domain_idx.values == j]
                                                                  for j in range(spec.domains)])
    catalog = Catalog.from_model(model)
    terms = [CooccurrenceTerm(), TextSimilarityTerm(), NextItemTerm()]
    for term in terms:
        term.fit(train, catalog)
    every = lambda p: {d: p for d in range(spec.domains)}  # noqa: E731  the same setting in every domain
    params = {"cooccurrence": every({"weight": 1.0, "decay": 0.8}), "text_similarity": every({"weight": 2.0, "decay": 0.6}),
              "next_item": every({"weight": 1.0})}
    folder = lake / "models" / "bench-scoring"
    save_artifact(folder, model, TermSet(terms, params, domains), index, {"input_domains": None})
    return domains


def bare_torch(spec: ScoringSpec, batch: int = 4096) -> float:
    """users/s of batched (users x 64) @ (items x 64)^T + topk per domain, in this process."""
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    users = torch.randn(spec.users, D_MODEL, generator=g)
    items = [torch.randn(spec.items_per_domain, D_MODEL, generator=g) for _ in range(spec.domains)]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, spec.users, batch):
            u = users[s : s + batch]
            for it in items:
                torch.topk(u @ it.T, spec.k, dim=1)
    return spec.users / (time.perf_counter() - t0)


def blas_kernel(spark) -> str:
    """The BLAS implementation Spark ML's ALS runs on: ``dev.ludovic.netlib``'s native one (``JNIBLAS``: the system's
    ``libblas.so.3``, e.g. OpenBLAS from ``make bench-deps``) or a JVM fallback (``VectorBLAS``/``JavaBLAS``);
    ``unknown`` on Spark Connect, whose client cannot ask the server's JVM."""
    try:
        return str(spark._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName())
    except Exception:  # noqa: BLE001 -- Connect sessions have no _jvm
        return "unknown"


def spark_als(spark, lake: Path, spec: ScoringSpec) -> dict:
    """Implicit ALS rank 64 on silver.interactions, then ``recommendForAllUsers(k)`` timed twice on the fitted model:
    to a ``noop`` sink (every row materialised, nothing written) and to Delta in gold.recommendations' form (one row
    per user, rank and item: ``run_date, user_id, domain, item_id, rank, score, reason, model_version``, partitioned
    by run date and domain, one commit). ALS ranks all items at once: K rows a user, where crossrec writes K per
    domain. Returns ``{noop, delta}`` (users/s), ``fit_s`` (not timed in either) and ``rows`` written."""
    import datetime as dt

    from pyspark.ml.feature import IndexToString, StringIndexer
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from crossrec.io.delta import read_table

    inter = read_table(spark, str(lake / "silver" / "interactions")).select(
        C.USER_ID, F.concat_ws(":", C.DOMAIN, C.ITEM_ID).alias("key"))
    users = StringIndexer(inputCol=C.USER_ID, outputCol="user").fit(inter)
    items = StringIndexer(inputCol="key", outputCol="item").fit(inter)
    inter = items.transform(users.transform(inter))
    pairs = inter.groupBy(F.col("user").cast("int").alias("user"), F.col("item").cast("int").alias("item")).agg(
        F.count("*").cast("float").alias("rating")).cache()
    pairs.count()
    t0 = time.perf_counter()
    model = ALS(rank=D_MODEL, maxIter=1, regParam=0.1, alpha=10.0, implicitPrefs=True, userCol="user", itemCol="item",
                ratingCol="rating", seed=spec.seed).fit(pairs)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.recommendForAllUsers(spec.k).write.format("noop").mode("overwrite").save()
    noop = spec.users / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    flat = model.recommendForAllUsers(spec.k).select("user", F.posexplode("recommendations").alias("pos", "rec"))
    flat = flat.select(F.col("user").cast("double").alias("user"), F.col("rec.item").cast("double").alias("item"),
                       (F.col("pos") + 1).alias(C.RANK), F.col("rec.rating").cast("float").alias(C.SCORE))
    flat = IndexToString(inputCol="user", outputCol=C.USER_ID, labels=users.labels).transform(flat)
    flat = IndexToString(inputCol="item", outputCol="key", labels=items.labels).transform(flat)
    key = F.split("key", ":", 2)
    out = flat.select(F.lit(dt.date(2025, 1, 1)).alias(C.RUN_DATE), C.USER_ID, key[0].alias(C.DOMAIN),
                      key[1].alias(C.ITEM_ID), C.RANK, C.SCORE, F.lit("als").alias(C.REASON),
                      F.lit("als").alias(C.MODEL_VERSION), F.lit("history_item").alias(C.REASON_KIND),
                      F.lit(None).cast("string").alias(C.REASON_ENTITY))
    path = str(lake / "bench" / "als_recommendations")
    out.write.format("delta").partitionBy(C.RUN_DATE, C.DOMAIN).mode("overwrite").save(path)
    delta = spec.users / (time.perf_counter() - t0)
    rows = read_table(spark, path).count()
    pairs.unpersist()
    return {"noop": noop, "delta": delta, "fit_s": fit_s, "rows": rows}


def write_floor(spark, lake: Path, spec: ScoringSpec) -> float:
    """users/s of the score stage's output path alone: the rows crossrec just wrote (cached in memory) sent
    through an identity ``mapInArrow`` and written as Delta, partitioned like gold.recommendations. No history
    shuffle, no model: the ceiling the score stage cannot pass on this machine, whatever the model costs."""
    from crossrec.io.delta import read_table

    rows = read_table(spark, str(lake / "gold" / "recommendations")).persist()
    rows.count()
    t0 = time.perf_counter()
    (rows.mapInArrow(lambda batches: batches, rows.schema).write.format("delta").partitionBy(C.RUN_DATE, C.DOMAIN)
     .mode("overwrite").save(str(lake / "bench" / "write_floor")))
    rate = spec.users / (time.perf_counter() - t0)
    rows.unpersist()
    return rate


def model_alone(spark, lake: Path, spec: ScoringSpec, batch_users: int = 1024,
                users_per_task: int | None = None) -> tuple[float, float, int]:
    """(users/s, load seconds, rows) of the score stage's ``mapInArrow`` body run in this process on the bench's
    histories: the model with its score terms, seen-item exclusion, top-K, reasons and the output Arrow batches,
    without Spark or a write. Torch uses every core here, as the stage's workers do together. ``users_per_task``: the
    users of one input batch (default the stage's :data:`~crossrec.score.stage.USERS_PER_PARTITION`)."""
    import datetime as dt

    from crossrec.io.delta import read_table
    from crossrec.score import stage as S
    from crossrec.score.topk import get_scorer

    folder = str(lake / "models" / "bench-scoring")
    catalog = S.catalog_frame(spark, folder)
    histories = S.user_histories(read_table(spark, str(lake / "silver" / "interactions")), catalog).persist()
    hist = histories.select(C.USER_ID, C.ITEM_IDX, C.EVENT_TS).toArrow()
    pop = S.popularity(histories, spec.domains * spec.items_per_domain)
    histories.unpersist()
    t0 = time.perf_counter()
    get_scorer(folder, spec.k, pop)  # what each worker process of the stage does once
    load_s = time.perf_counter() - t0
    # a task's users, as the stage's mapInArrow gets them
    batches = hist.to_batches(max_chunksize=users_per_task or S.USERS_PER_PARTITION)
    t0 = time.perf_counter()
    rows = sum(b.num_rows for b in S.score_batches(iter(batches), folder, spec.k, pop, dt.date(2025, 1, 1), None,
                                                    batch_users))
    rate = hist.num_rows / (time.perf_counter() - t0)
    log.info("model alone: %d users -> %d rows, %.0f users/s (artifact load %.1fs)", hist.num_rows, rows, rate, load_s)
    return rate, load_s, rows


def run_scoring(spec: ScoringSpec, spark=None) -> dict:
    """Run the three systems and the two ceilings; write scoring.json / .md / .png; return the result."""
    from crossrec.io.config import resolve_config
    from crossrec.io.spark import build_spark
    from crossrec.score.stage import run_score

    out = Path(spec.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lake = out / "lake"
    # one native BLAS thread per task, as Spark's ML guide advises: Spark runs the tasks in parallel already (set
    # before the JVM starts; a session passed in keeps its own setting)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    spark = spark or build_spark("crossrec-bench-scoring", "local[*]", {})
    t0 = time.time()
    domains = write_lake(spark, spec, lake)
    log.info("bench lake: %d users x %d events, %d domains x %d items (%.1fs)", spec.users, spec.events,
             spec.domains, spec.items_per_domain, time.time() - t0)
    n_items = spec.domains * spec.items_per_domain
    cfg = resolve_config(overrides={"lake_root": str(lake), "validate": False, "run_date": "2025-01-01"})
    summary = run_score(cfg, spark, k=spec.k, version=str(lake / "models" / "bench-scoring"), publish=False)
    log.info("crossrec score stage: %.0f users/s", summary["users_per_s"])
    floor_rate = write_floor(spark, lake, spec)
    log.info("output path alone (same rows, identity mapInArrow, Delta write): %.0f users/s", floor_rate)
    als = spark_als(spark, lake, spec)
    kernel = blas_kernel(spark)
    log.info("Spark ALS recommendForAllUsers: %.0f users/s to noop, %.0f users/s to Delta (fit %.1fs, not timed; "
             "BLAS %s)", als["noop"], als["delta"], als["fit_s"], kernel)
    torch_rate = bare_torch(spec)
    log.info("bare PyTorch matmul + topk: %.0f users/s", torch_rate)
    model_rate, load_s, model_rows = model_alone(spark, lake, spec)
    size = {"users": spec.users, "items": n_items, "k": spec.k, "domains": len(domains)}
    rows = [("crossrec", "crossrec score stage", summary["users_per_s"]),
            ("als_noop", "Spark ALS recommendForAllUsers to noop", als["noop"]),
            ("als_delta", "Spark ALS recommendForAllUsers written to Delta (crossrec's table form)", als["delta"]),
            ("torch", "bare torch matmul+topk", torch_rate),
            ("write_floor", "write floor (same rows to Delta, no model)", floor_rate),
            ("model_alone", "model alone (the stage's scoring code, no Spark, no write)", model_rate)]
    records = [{"system": system, "label": label, "value": round(value, 1), "unit": "users/s", **size}
               for system, label, value in rows]
    v = {r["system"]: r["value"] for r in records}  # the ratios of the figures as reported
    result = {"records": records,
              "ratios": {"crossrec_vs_als_delta": v["crossrec"] / v["als_delta"],
                         "crossrec_vs_als_noop": v["crossrec"] / v["als_noop"],
                         "crossrec_vs_torch": v["crossrec"] / v["torch"],
                         "write_floor_vs_als_delta": v["write_floor"] / v["als_delta"],
                         "model_alone_vs_als_noop": v["model_alone"] / v["als_noop"],
                         "model_alone_vs_torch": v["model_alone"] / v["torch"]},
              "targets": {"crossrec_vs_als_delta": 2.0, "crossrec_vs_als_noop": 1.0, "crossrec_vs_torch": 0.25},
              "spec": asdict(spec), "als_fit_s": round(als["fit_s"], 1), "als_rows": als["rows"], "als_blas": kernel,
              "model_load_s": round(load_s, 1), "model_alone_rows": model_rows, "score_summary": summary,
              "cpus": os.cpu_count()}
    (out / "scoring.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    lines = ["# Scoring benchmark", "", f"{spec.users:,} users x {n_items:,} items ({len(domains)} domains), K={spec.k}, "
             f"{os.cpu_count()} CPUs.", "", "| system | users/s |", "|---|---:|"]
    lines += [f"| {r['label']} | {r['value']:,.0f} |" for r in records]
    ratio = result["ratios"]
    lines += ["", f"crossrec = {ratio['crossrec_vs_als_delta']:.2f}x ALS written to Delta (target 2x), "
              f"{ratio['crossrec_vs_als_noop']:.2f}x ALS to noop (target 1x), {ratio['crossrec_vs_torch']:.0%} of bare "
              f"PyTorch (target 25%). ALS ran on BLAS {kernel} and wrote {als['rows']:,} rows (K a user; crossrec "
              f"writes K a user and domain: {summary.get('rows', 0):,}).",
              f"Writing crossrec's rows with no model at all reaches {ratio['write_floor_vs_als_delta']:.2f}x ALS to Delta; "
              f"the model alone, with no Spark and no write, {ratio['model_alone_vs_als_noop']:.2f}x ALS to noop and "
              f"{ratio['model_alone_vs_torch']:.0%} of bare PyTorch (artifact load {load_s:.1f}s, not counted).",
              ""]
    (out / "scoring.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(records, out / "scoring.png")
    print("\n".join(lines))
    return result


def _plot(records: list[dict], path: Path, unit: str = "users/s") -> None:
    """A horizontal bar chart of the records' values (log scale)."""
    from crossrec.bench import pyplot

    plt = pyplot(path)
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.barh([r.get("system") or r.get("stage") for r in records], [r["value"] for r in records])
    ax.set_xlabel(unit)
    ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["ScoringSpec", "run_scoring", "bare_torch", "blas_kernel", "model_alone", "spark_als", "write_floor",
           "write_lake"]
