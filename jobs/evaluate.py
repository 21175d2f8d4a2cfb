"""Evaluate stage: every model through the same full-ranking protocol -> gold.metrics (+ a printed table).

Run it:
    crossrec evaluate --lake-root lakehouse [--model-version V] [--baselines pop,itemknn,als] [--out DIR]
    crossrec evaluate --lake-root lakehouse --model crossrec=V1 --model sasrec=/path/to/artifact ...
    crossrec evaluate --lake-root lakehouse --model crossrec=V1 --model-alone transformer=V1   # with and without terms
    python -m crossrec_jobs.evaluate ...                     # same thing

The protocol (lib/crossrec/evaluate/protocol.py): for each test row, all items of the target domain are
ranked, the user's history items in that domain excluded; Recall/NDCG/Precision/F1@{10,20}, MRR, AUC and
catalog coverage per domain and per segment (all users, cross-domain cold-start users, cold items); ``--out``'s
records also carry each value's standard error over the segment's users (``se``; gold.metrics keeps the values),
and crossrec (and every ``--model-alone`` model; ``--paired`` names others) is compared user by user with the best
other model per domain and segment: the mean per-user NDCG@10 difference and its standard error (printed, and
under ``paired`` in ``--out``'s metrics.json).
The gold tables are read at pinned versions (recorded with the results); the Transformer comes from a
model artifact (default: the model registry's ``models:/crossrec@champion``; ``--model NAME=VERSION|FOLDER``, repeatable,
evaluates several side by side: artifacts trained on some domains only (``crossrec train --input-domains``)
are evaluated on those domains, so one name may combine one artifact per domain; ``--model-alone NAME=VERSION|FOLDER``
evaluates an artifact's Transformer without its score terms); every artifact scores through the one inference path
(crossrec.inference.Predictor); baselines are fitted on the spot on the same training data. Results are appended to gold.metrics (a re-run with the same run id replaces its rows).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time

import pandas as pd

from crossrec.cli.common import add_common_args, config_from_args, run_guarded, setup_logging, spark_conf
from crossrec.io.config import CrossrecConfig
from crossrec.io.registry import ModelNotFound, artifact_folder

log = logging.getLogger("crossrec.jobs.evaluate")
STAGE = "evaluate"
BASELINES = ("pop", "itemknn", "als")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    g = p.add_argument_group("evaluate")
    g.add_argument("--model-version", help="model to evaluate as 'crossrec': registered version (3, @alias, "
                   "models:/crossrec/3), artifact version or folder (default: the champion; none: baselines only)")
    g.add_argument("--model", action="append", default=[], metavar="NAME=VERSION|FOLDER",
                   help="evaluate this model under NAME (repeatable; replaces the default crossrec=champion)")
    g.add_argument("--model-alone", action="append", default=[], metavar="NAME=VERSION|FOLDER",
                   help="evaluate this model's Transformer without its score terms under NAME (repeatable; also "
                        "replaces the default crossrec=champion)")
    g.add_argument("--baselines", default="pop,itemknn", help=f"comma-separated, of {','.join(BASELINES)} (default pop,itemknn)")
    g.add_argument("--split", default="test", choices=["test", "valid"], help="targets to evaluate on (default test)")
    g.add_argument("--paired", metavar="NAMES",
                   help="comma-separated models to compare, user by user, with the best of the other models (NDCG@10 "
                        "per domain and segment: mean per-user difference and its standard error; default: crossrec and "
                        "every --model-alone name)")
    g.add_argument("--out", help="also write <out>/metrics.json (the records and the paired comparisons) there")


def parse_models(specs: list[str], version: str | None, alone: list[str] = ()) -> list[tuple[str, str | None, bool]]:
    """``--model`` / ``--model-alone NAME=VERSION|FOLDER`` flags (and ``--model-version``) -> [(name, version or
    folder, with its score terms)]."""
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
                 models: list[tuple[str, str | None, bool]] | None = None,
                 paired: list[str] | None = None) -> tuple[list[dict], dict]:
    """Records of every requested model, and ``{"versions": the data versions they were measured on, "seconds":
    per model, "paired": paired comparison records}``.

    ``models``: (name, version or folder, with its score terms) of the Transformer artifacts; default
    ``[("crossrec", version, True)]``. ``paired``: the models compared user by user with the best other model
    (:func:`crossrec.evaluate.protocol.paired_records`); default crossrec and every model evaluated without terms.
    """
    from crossrec.evaluate.protocol import (baseline_score_fn, evaluate, load_eval_data, paired_records,
                                            transformer_score_fn)
    from crossrec.model import baselines as B

    data = load_eval_data(cfg.lake_uri, split=split)
    records: list[dict] = []
    timings: dict[str, float] = {}
    per_row: dict[str, dict] = {}
    for name in baselines:
        t0 = time.time()
        if name == "pop":
            model = B.Popularity()
        elif name == "itemknn":
            model = B.ItemKNN()
        elif name == "als":
            from crossrec.model.als import SparkALS

            model = SparkALS(spark, seed=cfg.seed)
        else:
            raise ValueError(f"unknown baseline {name!r}; known: {BASELINES}")
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
    pairs = paired_records(per_row, [m for m in dict.fromkeys(paired) if m in per_row])
    return records, {"versions": data.versions, "seconds": timings, "paired": pairs}



def format_table(records: list[dict], metric: str = "ndcg", k: int = 10) -> str:
    """NDCG@10 (by default) of every model, domain and segment, as a fixed-width table."""
    df = pd.DataFrame(records)
    df = df[(df.metric == metric) & (df.k == k)]
    if df.empty:
        return "(no results)"
    pivot = df.pivot_table(index=["domain", "segment"], columns="model", values="value").round(4)
    users = df.groupby(["domain", "segment"]).n_users.max()
    pivot["users"] = users
    return f"{metric}@{k}\n" + pivot.to_string()


def write_metrics(spark, cfg: CrossrecConfig, run_id: str, records: list[dict], versions: dict) -> int:
    """Append ``records`` to gold.metrics (replacing this run id's rows) and validate them."""
    from crossrec.io.delta import read_table, sql_string, write_table
    from crossrec.quality.contracts import load_contract
    from crossrec.quality.validate import Validator

    contract = load_contract("gold.metrics")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [
        {"run_id": run_id, "model": r["model"], "model_version": r.get("model_version"), "domain": r["domain"],
         "segment": r["segment"], "metric": r["metric"], "k": int(r["k"]), "value": float(r["value"]),
         "n_users": int(r["n_users"]), "data_versions": json.dumps(versions, sort_keys=True), "evaluated_at": now}
        for r in records
    ]
    df = spark.createDataFrame(rows, contract.spark_schema())
    path = cfg.table_path("gold.metrics")
    version = write_table(spark, df, contract, path, "overwrite", replace_where=f"run_id = {sql_string(run_id)}")
    if cfg.validate:
        this_run = read_table(spark, path, version).where(f"run_id = {sql_string(run_id)}")
        Validator(cfg.reports_root, run_id).check(contract, this_run, expected_rows=len(rows), version=version)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crossrec evaluate", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        from crossrec.io.spark import build_spark

        cfg = config_from_args(args)
        log.info("evaluate config: %s", cfg.masked())
        baselines = [b for b in args.baselines.split(",") if b]
        spark = build_spark("crossrec-evaluate", cfg.spark_master, spark_conf(cfg), remote=cfg.spark_remote)
        models = parse_models(args.model, args.model_version, args.model_alone)
        from crossrec.evaluate.protocol import format_paired

        paired = None if args.paired is None else [m for m in args.paired.split(",") if m]
        records, info = evaluate_all(cfg, baselines, args.model_version, args.split, spark, models, paired)
        print(format_table(records))
        if info["paired"]:
            print("paired differences (per user, with the best other model):\n" + format_paired(info["paired"]))
        print(f"data versions: {info['versions']}; seconds per model: {({k: round(v, 1) for k, v in info['seconds'].items()})}")
        run_id = cfg.effective_run_id(STAGE)
        write_metrics(spark, cfg, run_id, records, info["versions"])
        log_to_registry(cfg, records, args.split)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "metrics.json"), "w", encoding="utf-8") as fh:
                json.dump({"records": records, **info}, fh, indent=2, default=str)

    return run_guarded(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())
