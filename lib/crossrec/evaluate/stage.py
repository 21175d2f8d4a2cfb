"""The evaluate stage: every model through the one full-ranking protocol -> gold.metrics, a printed table, MLflow.

Baselines (:data:`BASELINES`) are fitted on the spot on the protocol's training data; Transformer artifacts are named
by registered version, artifact version or folder (:func:`crossrec.io.registry.artifact_folder`) and score through
the one inference path (:func:`crossrec.evaluate.protocol.transformer_score_fn`), with or without their score terms.
An artifact trained on some domains only is evaluated on those domains. The gold tables are read at pinned versions,
recorded with the results. Models named for a paired comparison are compared user by user with the best other model
per domain and segment (:func:`crossrec.evaluate.protocol.paired_records`).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time

from crossrec import columns as C
from crossrec.io.config import CrossrecConfig
from crossrec.io.registry import ModelNotFound, artifact_folder

log = logging.getLogger(__name__)

STAGE = "evaluate"
BASELINES = ("pop", "itemknn", "als")

# (name, registered version / artifact version / folder or None for the champion, with its score terms)
ModelSpec = tuple[str, str | None, bool]


def parse_models(specs: list[str], version: str | None, alone: list[str] = ()) -> list[ModelSpec]:
    """``--model`` / ``--model-alone NAME=VERSION|FOLDER`` flags (and ``--model-version``) -> [(name, version or
    folder, with its score terms)]; ``crossrec`` (the champion, or ``version``) first unless only other models are
    named. Raises ValueError on a spec without ``NAME=``."""
    out = []
    for flag, specs_, with_terms in (("--model", specs, True), ("--model-alone", alone, False)):
        for spec in specs_:
            name, sep, ref = spec.partition("=")
            if not sep or not name or not ref:
                raise ValueError(f"{flag} {spec!r}: expected NAME=VERSION or NAME=FOLDER")
            out.append((name, ref, with_terms))
    if version is not None or not out:
        out.insert(0, ("crossrec", version, True))
    return out


def evaluate_all(cfg: CrossrecConfig, baselines: list[str], version: str | None, split: str = "test", spark=None,
                 models: list[ModelSpec] | None = None, paired: list[str] | None = None) -> tuple[list[dict], dict]:
    """Records of every requested model, and ``{"versions": the data versions they were measured on, "seconds":
    per model, "paired": paired comparison records}``.

    ``models``: (name, version or folder, with its score terms) of the Transformer artifacts; default
    ``[("crossrec", version, True)]``; the default champion missing leaves the baselines only. ``paired``: the models
    compared user by user with the best other model, or pairs ``"A:B"`` (A against B, e.g. an ablation)
    (:func:`crossrec.evaluate.protocol.paired_records`); default
    crossrec and every model evaluated without terms. ``spark`` is needed by the ``als`` baseline only.
    """
    from crossrec.evaluate.protocol import (baseline_score_fn, evaluate, load_eval_data, paired_records,
                                            transformer_score_fn)

    data = load_eval_data(cfg.lake_uri, split=split)
    records: list[dict] = []
    timings: dict[str, float] = {}
    per_row: dict[str, dict] = {}
    for name in baselines:
        t0 = time.time()
        model = _baseline(name, spark, cfg.seed)
        model.fit(data.train)
        recs = evaluate(model.name, baseline_score_fn(model), data, per_row=per_row.setdefault(model.name, {}))
        timings[model.name] = time.time() - t0
        records += [dict(r, model_version=None) for r in recs]
        log.info("%s evaluated in %.1fs", model.name, timings[model.name])
    for name, ref, with_terms in models or [("crossrec", version, True)]:
        try:
            folder = artifact_folder(cfg.lake_uri, ref, cfg.mlflow_tracking_uri)
        except ModelNotFound as e:
            if ref is not None:
                raise
            log.warning("%s: evaluated baselines only", e)
            continue
        from crossrec.model.artifact import load_artifact

        t0 = time.time()
        art = load_artifact(folder, with_terms=with_terms)
        n_model = art.model.config.n_items
        if n_model != data.train.n_items:
            raise ValueError(f"{folder} was trained on {n_model} items, gold.item_index has {data.train.n_items}: retrain or evaluate the matching data version")
        domains = art.metrics.get("input_domains")
        mv = art.version
        recs = evaluate(name, transformer_score_fn(art.model, data, art.terms, input_domains=domains), data,
                        domains=domains, per_row=per_row.setdefault(name, {}))
        timings[name] = timings.get(name, 0.0) + time.time() - t0
        records += [dict(r, model_version=mv) for r in recs]
        log.info("%s (%s%s) evaluated in %.1fs", name, mv, f", domains {domains}" if domains else "", time.time() - t0)
    models = models or [("crossrec", version, True)]
    if paired is None:
        paired = [name for name, _, with_terms in models if name == "crossrec" or not with_terms]
    unknown = sorted({side for m in paired for side in m.split(":", 1)} - set(per_row))
    if any(":" in m for m in paired) and unknown:
        raise ValueError(f"--paired {','.join(paired)}: {unknown} not evaluated (models: {sorted(per_row)})")
    pairs = paired_records(per_row, [m for m in dict.fromkeys(paired) if m.split(":", 1)[0] in per_row])
    return records, {"versions": data.versions, "seconds": timings, "paired": pairs}


def _baseline(name: str, spark, seed: int):
    """An unfitted baseline by its :data:`BASELINES` name (``als`` runs on ``spark``)."""
    from crossrec.model import baselines as B

    if name == "pop":
        return B.Popularity()
    if name == "itemknn":
        return B.ItemKNN()
    if name == "als":
        from crossrec.model.als import SparkALS

        return SparkALS(spark, seed=seed)
    raise ValueError(f"unknown baseline {name!r}; known: {BASELINES}")


def format_table(records: list[dict], metric: str = "ndcg", k: int = 10) -> str:
    """NDCG@10 (by default) of every model, domain and segment, as a fixed-width table."""
    import pandas as pd

    df = pd.DataFrame(records)
    df = df[(df.metric == metric) & (df.k == k)]
    if df.empty:
        return "(no results)"
    pivot = df.pivot_table(index=["domain", "segment"], columns="model", values="value").round(4)
    users = df.groupby(["domain", "segment"]).n_users.max()
    pivot["users"] = users
    return f"{metric}@{k}\n" + pivot.to_string()


def format_report(records: list[dict], info: dict) -> str:
    """What ``crossrec evaluate`` prints: the NDCG@10 table, the paired differences (when any), the data versions
    and the seconds each model took (``info`` as :func:`evaluate_all` returns it)."""
    from crossrec.evaluate.protocol import format_paired

    lines = [format_table(records)]
    if info["paired"]:
        lines.append("paired differences (per user, with the best other model):\n" + format_paired(info["paired"]))
    lines.append(f"data versions: {info['versions']}; seconds per model: "
                 f"{({k: round(v, 1) for k, v in info['seconds'].items()})}")
    return "\n".join(lines)


def write_metrics(spark, cfg: CrossrecConfig, run_id: str, records: list[dict], versions: dict) -> int:
    """Append ``records`` to gold.metrics (replacing this run id's rows) and validate them; returns the version."""
    from crossrec.io.delta import read_table, sql_string, write_table
    from crossrec.quality.contracts import load_contract
    from crossrec.quality.validate import Validator

    contract = load_contract("gold.metrics")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [
        {C.RUN_ID: run_id, "model": r["model"], C.MODEL_VERSION: r.get("model_version"), C.DOMAIN: r["domain"],
         "segment": r["segment"], "metric": r["metric"], "k": int(r["k"]), "value": float(r["value"]),
         "n_users": int(r["n_users"]), "data_versions": json.dumps(versions, sort_keys=True), "evaluated_at": now}
        for r in records
    ]
    df = spark.createDataFrame(rows, contract.spark_schema())
    path = cfg.table_path("gold.metrics")
    version = write_table(spark, df, contract, path, "overwrite", replace_where=f"run_id = {sql_string(run_id)}")
    if cfg.validate:
        this_run = read_table(spark, path, version).where(f"run_id = {sql_string(run_id)}")
        validator = Validator(cfg.reports_root, run_id)
        validator.check(contract, this_run, expected_rows=len(rows), version=version)
        validator.finish()
    return version


def log_to_registry(cfg: CrossrecConfig, records: list[dict], split: str) -> None:
    """Each registered model's NDCG and Recall@10 per domain and segment onto the MLflow run that trained it."""
    from crossrec.io.registry import Registry

    registry = Registry(cfg.lake_uri, cfg.mlflow_tracking_uri)
    by_version = {v.model_version: v for v in registry.versions()}
    for mv in sorted({r["model_version"] for r in records if r.get("model_version") in by_version}):
        figures = {f"{r['model']}.{split}_{r['metric']}@{r['k']}.{r['domain']}.{r['segment']}": r["value"]
                   for r in records if r.get("model_version") == mv and r["metric"] in ("ndcg", "recall") and r["k"] == 10}
        registry.log_metrics(by_version[mv].number, figures)
        log.info("metrics of %s logged to MLflow run %s", mv, by_version[mv].run_id)


def run_evaluate(cfg: CrossrecConfig, spark, models: list[ModelSpec], baselines: list[str], split: str = "test",
                 paired: list[str] | None = None, out: str | None = None) -> tuple[list[dict], dict]:
    """Evaluate ``models`` and ``baselines`` (:func:`evaluate_all`), print the report, append the records to
    gold.metrics (a re-run with the same run id replaces its rows), log them to the models' MLflow runs, and with
    ``out`` write ``<out>/metrics.json`` (the records, the data versions, the seconds, the paired comparisons).
    Returns :func:`evaluate_all`'s records and info."""
    records, info = evaluate_all(cfg, baselines, None, split, spark, models, paired)
    print(format_report(records, info))
    write_metrics(spark, cfg, cfg.effective_run_id(STAGE), records, info["versions"])
    log_to_registry(cfg, records, split)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as fh:
            json.dump({"records": records, **info}, fh, indent=2, default=str)
    return records, info
