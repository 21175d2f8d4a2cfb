"""Quality benchmark: one data set through the whole pipeline, every model through one evaluation.

    crossrec bench quality RAW_DIR --out DIR [--workers 2 --baselines pop,itemknn,als --epochs N]

``RAW_DIR`` is a raw data set in the documented format (``dataset.json`` + files; e.g. the output of
``crossrec import amazon-food-kitchen`` or ``crossrec generate``). The benchmark runs, each as its own job
process with its output in ``DIR/logs/<step>.log`` (``run_quality(spec, spark=...)`` runs the trainings and the
evaluation in the caller's process instead: evaluation on that Spark session, training on the caller's Ray
instance when one is initialised):

1. ``ingest`` -> ``clean`` -> ``features`` into a fresh lake (``DIR/lake`` unless ``--lake-root``); with
   ``--reuse-lake`` the lake at ``--lake-root`` (e.g. an earlier run's, built from the same ``RAW_DIR``) is
   used as it is, to compare models or training settings without rebuilding it;
2. ``train`` the cross-domain model (**crossrec**: text + id, every domain's history, plus the score terms of
   ``crossrec.rerank``: co-occurrence, category, text similarity, shared entities, next item, and popularity,
   category, text and shared entities for users new to a domain), learning rate annealed to 0 along a cosine over
   its epochs (:data:`OURS_TRAIN`); ``--crossrec-model`` evaluates an artifact trained earlier on the same lake
   instead (e.g. to add the baselines to a ``--no-sasrec`` run; its wall time is that training's);
3. ``train`` the single-domain baseline once per domain (**sasrec**: the same Transformer with text off,
   trained on and predicting from that domain's events only, no score terms;
   ``--input-domains D --no-text --terms none``), at a constant learning rate with early stopping once half
   its epochs have run, its best setting (:data:`SINGLE_DOMAIN_TRAIN`);
4. ``evaluate`` crossrec, crossrec's Transformer alone (**crossrec-alone**: the same artifact without its score
   terms, to show what the model and what the terms give), sasrec and the classic baselines (popularity, item-KNN,
   Spark ALS) with the same full-ranking protocol on the test split (``crossrec.evaluate.protocol``), and compare
   crossrec and crossrec-alone user by user with the best baseline.

It writes ``DIR/quality.json`` -- ``{"records": [{"model", "domain", "segment", "metric", "k", "value", "se",
"n_users", "model_version"}...], "wall_times_s": {model: train + evaluation seconds}, "stages_s": {step:
seconds}, ...}``, ``se`` the value's standard error over the segment's users; the paired comparisons are records ``{"model", "vs",
"domain", "segment", "metric": "ndcg_paired_diff", "k": 10, "value", "se", "n_users"}``, ``value`` the mean per-user
NDCG@10 difference with the best baseline ``vs`` -- and ``DIR/quality.md`` (NDCG@10
and Recall@10 tables, crossrec's ratio to the best other model per domain and segment with both values'
standard errors, wall times), and prints the NDCG@10 table.

The lake is throwaway: when no pseudonymisation key is configured (``CROSSREC_PSEUDONYM_KEY(_FILE)``), a
random one is written to ``DIR/pseudonym.key`` (mode 0600) for this run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from crossrec import columns as C
from crossrec.train.config import GOLD_TABLES

log = logging.getLogger(__name__)

OURS = "crossrec"
ALONE = "crossrec-alone"  # the same artifact's Transformer without its score terms
SINGLE_DOMAIN = "sasrec"
# each model's training schedule, unless --epochs / --crossrec-args / --sasrec-args override it; both stop early on
# valid NDCG@10 (the schedules were chosen on validation: docs/benchmarks.md); sasrec not before half its epochs, as
# its validation on ids alone can dip after the first epoch and recover later
OURS_TRAIN = ("--lr-schedule", "cosine", "--epochs", "6")
SINGLE_DOMAIN_TRAIN = ("--lr-schedule", "constant", "--epochs", "10", "--min-epochs", "5")
# --ablation NAME: crossrec trained again with these flags, as models crossrec-no-NAME and crossrec-alone-no-NAME,
# each compared user by user with its full counterpart (quality.json "ablations"; never a baseline)
ABLATIONS = {"entities": ("--no-entities",), "vectors": ("--no-vectors",)}
FORWARD = re.compile(r"crossrec\.train\.loop: (epoch \d+:|model artifact)|crossrec: \w+: done in|ERROR")


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message names the step and its log file."""


@dataclass(frozen=True)
class QualitySpec:
    """What the quality benchmark runs (the flags of ``crossrec bench quality``)."""

    raw_dir: str
    out_dir: str
    lake_root: str | None = None  # default <out>/lake
    reuse_lake: bool = False  # lake_root already holds the gold tables of raw_dir: skip ingest, clean, features
    workers: int = 2
    epochs: int | None = None  # every training run's epochs; None = each model's own (OURS_TRAIN, SINGLE_DOMAIN_TRAIN)
    baselines: tuple[str, ...] = ("pop", "itemknn", "als")
    single_domain: bool = True  # train and evaluate the sasrec baseline
    crossrec_args: tuple[str, ...] = ()  # extra `crossrec train` flags for the cross-domain model
    crossrec_model: str | None = None  # a trained crossrec artifact (of the lake's data) to evaluate, not trained again
    sasrec_args: tuple[str, ...] = ()  # extra `crossrec train` flags for the single-domain baseline
    seed: int | None = None  # seed of the cold-start sample and of every training; None = the jobs' default (42)
    ablations: tuple[str, ...] = ()  # names of ABLATIONS: crossrec trained again without that component
    extra_env: dict = field(default_factory=dict)

    @property
    def lake(self) -> str:
        return os.path.abspath(self.lake_root or os.path.join(self.out_dir, "lake"))


def _run_step(name: str, module: str, args: list[str], out: Path, env: dict) -> float:
    """Run ``python -m <module> <args>``; full output to ``out/logs/<name>.log``, progress lines to the log."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{name}.log"
    cmd = [sys.executable, "-m", module, *args]
    log.info("[%s] %s", name, " ".join(shlex.quote(c) for c in cmd[2:]))
    t0 = time.time()
    with open(log_file, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        for line in proc.stdout:
            fh.write(line)
            if FORWARD.search(line):
                log.info("[%s] %s", name, line.rstrip()[-200:])
        rc = proc.wait()
    seconds = time.time() - t0
    if rc != 0:
        tail = "".join(open(log_file, encoding="utf-8", errors="replace").readlines()[-15:])
        raise BenchError(f"step {name!r} failed with exit code {rc} after {seconds:.0f}s; log {log_file}; last lines:\n{tail}")
    log.info("[%s] done in %.1fs", name, seconds)
    return seconds


@contextlib.contextmanager
def _environ(env: dict):
    """``os.environ`` is ``env`` inside the block (what a step's process would get), restored after."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run_inline(name: str, main: Callable[[list[str]], int], args: list[str], out: Path, env: dict) -> float:
    """Run a job's ``main(args)`` in this process, with the environment a step's process gets and its crossrec
    log lines (INFO and up) in ``out/logs/<name>.log``, as :func:`_run_step` does for a process."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{name}.log"
    handler = logging.FileHandler(log_file, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    ours = logging.getLogger("crossrec")
    level = ours.level
    ours.setLevel(min(level or logging.INFO, logging.INFO))
    ours.addHandler(handler)
    log.info("[%s] in this process: %s", name, " ".join(shlex.quote(a) for a in args))
    t0 = time.time()
    try:
        with _environ(env):
            rc = main(args)
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
        handler.close()
    seconds = time.time() - t0
    if rc != 0:
        raise BenchError(f"step {name!r} failed with exit code {rc} after {seconds:.0f}s; log {log_file}")
    log.info("[%s] done in %.1fs", name, seconds)
    return seconds


def _run_job(name: str, stage: str, args: list[str], out: Path, env: dict, inline: bool) -> float:
    """``crossrec <stage> ARGS`` through the command line's entry point: :func:`_run_inline` when ``inline``, else
    :func:`_run_step`."""
    if not inline:
        return _run_step(name, "crossrec.cli.main", [stage, *args], out, env)
    from crossrec.cli.main import main as crossrec

    return _run_inline(name, lambda argv: crossrec([stage, *argv]), args, out, env)


def _trained(model_root: Path) -> Path:
    """The artifact a `crossrec train --no-register --model-root ROOT` wrote (each model here has a root of its own)."""
    arts = sorted((d for d in model_root.iterdir() if (d / "config.json").is_file()), key=lambda d: d.stat().st_mtime)
    if not arts:
        raise BenchError(f"training wrote no model artifact under {model_root}")
    return arts[-1]


def _env(spec: QualitySpec, out: Path) -> dict:
    env = dict(os.environ, **spec.extra_env)
    if not env.get("CROSSREC_PSEUDONYM_KEY") and not env.get("CROSSREC_PSEUDONYM_KEY_FILE"):
        key = out / "pseudonym.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
        env["CROSSREC_PSEUDONYM_KEY_FILE"] = str(key)
        log.info("no pseudonymisation key configured: using a random one for this benchmark lake (%s)", key)
    # the job processes import crossrec from this interpreter's environment
    return env




def missing_tables(lake: str, tables) -> list[str]:
    """The tables of ``tables`` (``layer.name``) that the local lake at ``lake`` does not hold as Delta tables."""
    return [t for t in tables if not os.path.isdir(os.path.join(lake, *t.split("."), "_delta_log"))]


def _check_reused_lake(spec: QualitySpec, raw: str) -> None:
    """``--reuse-lake``: the lake must be given, hold the gold tables, and cover the raw data set's domains."""
    from crossrec.data.rawformat import load_dataset
    from crossrec.io.readers import read_table

    if not spec.lake_root:
        raise BenchError("--reuse-lake needs --lake-root: the lake built earlier from the same raw data set")
    lake = spec.lake
    missing = missing_tables(lake, GOLD_TABLES)
    if missing:
        raise BenchError(f"--reuse-lake: {lake} has no {', '.join(missing)}; build it first (leave out --reuse-lake)")
    in_lake = set(read_table(lake, "gold.item_index", columns=[C.DOMAIN]).domain.unique())
    in_raw = set(load_dataset(raw).domains)
    if in_lake != in_raw:
        raise BenchError(f"--reuse-lake: the lake's domains {sorted(in_lake)} are not the raw data set's "
                         f"{sorted(in_raw)}: it was built from other data")
    log.info("reusing the lake %s (domains %s): ingest, clean and features skipped", lake, sorted(in_lake))


def check_reused_model(folder: str, lake: str) -> dict:
    """``--crossrec-model``: the artifact's ``metrics.json``, after checking it was trained on the lake's gold data.

    Raises:
        BenchError: no artifact there, or its data versions are not the lake's newest gold versions.
    """
    from crossrec.train.data import resolve_versions

    metrics_file = Path(folder) / "metrics.json"
    if not metrics_file.is_file() or not (Path(folder) / "model.safetensors").is_file():
        raise BenchError(f"--crossrec-model: {folder} is not a model artifact (no metrics.json / model.safetensors)")
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    trained_on = {t: int(v) for t, v in metrics.get("data_versions", {}).items()}
    current = resolve_versions(lake, None, tuple(trained_on))
    if trained_on != current:
        raise BenchError(f"--crossrec-model: {folder} was trained on {trained_on}, the lake {lake} is at {current}: "
                         "train it on this lake (leave out --crossrec-model)")
    log.info("reusing the crossrec model %s (trained in %.0fs on %s)", folder, metrics.get("wall_time_s", 0), current)
    return metrics


def run_quality(spec: QualitySpec, spark=None) -> dict:
    """Run the benchmark; returns what ``quality.json`` holds.

    Args:
        spec: what to run (the flags of ``crossrec bench quality``).
        spark: a running Spark session: the steps run in this process (e.g. the tests': no interpreter, Spark or
            Ray start per step), evaluation on this session, training on this process's Ray instance if
            ``ray.init`` was called, else a new local one per training. By default, as from the command line,
            every step is a job process of its own.
    """
    from crossrec.io.readers import read_table

    out = Path(spec.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw = os.path.abspath(spec.raw_dir)
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        raise BenchError(f"{raw} is not a raw data set: it has no dataset.json (see docs/raw-format.md)")
    unknown = sorted(set(spec.ablations) - set(ABLATIONS))
    if unknown:
        raise BenchError(f"unknown ablation(s) {unknown}; known: {sorted(ABLATIONS)}")
    if spec.crossrec_model and not spec.reuse_lake:  # a fresh lake's versions start at 1 too: the check would not hold
        raise BenchError("--crossrec-model needs --reuse-lake and --lake-root: the lake that model was trained on")
    env = _env(spec, out)
    lake = spec.lake
    common = ["--raw-dir", raw, "--lake-root", lake]
    stages: dict[str, float] = {}
    inline = spark is not None
    on_spark = ["--spark-master", "none"] if inline else []  # in this process: the jobs take the running session
    t_all = time.time()
    if spec.reuse_lake:
        _check_reused_lake(spec, raw)
    else:
        seed = ["--seed", str(spec.seed)] if spec.seed is not None else []
        for stage in ("ingest", "clean", "features"):
            stages[stage] = _run_job(stage, stage, [*common, *on_spark, *(seed if stage == "features" else [])],
                                     out, env, inline)

    domains = sorted(read_table(lake, "gold.item_index", columns=[C.DOMAIN]).domain.unique())
    models_root = out / "models"
    train_s: dict[str, float] = {}
    base = ["--lake-root", lake, "--workers", str(spec.workers)]
    if spec.seed is not None:
        base += ["--seed", str(spec.seed)]
    epochs = ["--epochs", str(spec.epochs)] if spec.epochs else []  # after the model's defaults: the last flag wins
    if spec.crossrec_model:
        ours = Path(spec.crossrec_model).resolve()
        train_s[OURS] = float(check_reused_model(str(ours), lake).get("wall_time_s", 0.0))  # its own training's time
    else:
        stages["train crossrec"] = train_s[OURS] = _run_job(
            "train-crossrec", "train",
            [*base, *OURS_TRAIN, *epochs, "--model-root", str(models_root / OURS), "--no-register", *spec.crossrec_args], out, env,
            inline)
        ours = _trained(models_root / OURS)
    model_flags = ["--model", f"{OURS}={ours}", "--model-alone", f"{ALONE}={ours}"]
    train_s[ALONE] = train_s[OURS]  # one training serves both
    paired, ablated = [OURS, ALONE], set()
    for name in spec.ablations:
        full, alone = f"{OURS}-no-{name}", f"{ALONE}-no-{name}"
        stages[f"train {full}"] = train_s[full] = train_s[alone] = _run_job(
            f"train-{full}", "train",
            [*base, *OURS_TRAIN, *epochs, "--model-root", str(models_root / full), "--no-register", *spec.crossrec_args,
             *ABLATIONS[name]], out, env, inline)
        folder = _trained(models_root / full)
        model_flags += ["--model", f"{full}={folder}", "--model-alone", f"{alone}={folder}"]
        paired += [f"{OURS}:{full}", f"{ALONE}:{alone}"]
        ablated |= {full, alone}
    if spec.single_domain:
        train_s[SINGLE_DOMAIN] = 0.0
        for d in domains:
            root = models_root / f"{SINGLE_DOMAIN}-{d}"
            s = _run_job(f"train-{SINGLE_DOMAIN}-{d}", "train",
                         [*base, *SINGLE_DOMAIN_TRAIN, *epochs, "--model-root", str(root), "--no-register", "--no-text",
                          "--input-domains", d, "--terms", "none", *spec.sasrec_args],
                         out, env, inline)
            stages[f"train {SINGLE_DOMAIN} {d}"] = s
            train_s[SINGLE_DOMAIN] += s
            model_flags += ["--model", f"{SINGLE_DOMAIN}={_trained(root)}"]

    eval_dir = out / "evaluate"
    eval_args = ["--lake-root", lake, "--baselines", ",".join(spec.baselines), *model_flags, "--paired", ",".join(paired),
                 "--out", str(eval_dir)]
    stages["evaluate"] = _run_job("evaluate", "evaluate", [*eval_args, *on_spark], out, env, inline)
    ev = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    records = [{k: r.get(k) for k in ("model", "domain", "segment", "metric", "k", "value", "se", "n_users", "model_version")}
               for r in ev["records"]]
    records += ev.get("paired", [])  # metric ndcg_paired_diff: crossrec and crossrec-alone vs the best baseline
    # an ablation's figures and its pairs stay apart: they are no baseline of crossrec
    ablations = [r for r in records if r["model"] in ablated or r.get("vs") in ablated]
    records = [r for r in records if r not in ablations]
    wall = {m: round(train_s.get(m, 0.0) + s, 1) for m, s in ev["seconds"].items()}
    result = {
        "records": records,
        "ablations": ablations,
        "wall_times_s": wall,
        "train_times_s": {m: round(s, 1) for m, s in train_s.items()},
        "eval_times_s": {m: round(s, 1) for m, s in ev["seconds"].items()},
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "total_s": round(time.time() - t_all, 1),
        "data": {"raw_dir": raw, "lake_root": lake, "domains": domains, "versions": ev["versions"]},
        "config": {"reuse_lake": spec.reuse_lake, "crossrec_model": str(ours) if spec.crossrec_model else None,
                   "workers": spec.workers, "epochs": spec.epochs, "seed": spec.seed,
                   "crossrec_train": list(OURS_TRAIN),
                   "sasrec_train": list(SINGLE_DOMAIN_TRAIN), "baselines": list(spec.baselines),
                   "crossrec_args": list(spec.crossrec_args), "sasrec_args": list(spec.sasrec_args),
                   "ablations": {n: list(ABLATIONS[n]) for n in spec.ablations}},
    }
    (out / "quality.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    md = format_markdown(result)
    (out / "quality.md").write_text(md, encoding="utf-8")
    print(format_table(records))
    pairs = [r for r in records if r["metric"] == "ndcg_paired_diff"]
    if pairs:
        from crossrec.evaluate.protocol import format_paired

        print("paired differences (per user, with the best baseline):\n" + format_paired(pairs))
    if ablations:
        from crossrec.evaluate.protocol import format_paired

        print("ablations (per user, the full model minus the model without the component):\n"
              + format_paired([r for r in ablations if r["metric"] == "ndcg_paired_diff"]))
    print(f"\nwall times (train + evaluate, s): {wall}")
    print(f"wrote {out / 'quality.json'} and {out / 'quality.md'}")
    return result


def _pivot(records: list[dict], metric: str, k: int, values: str = "value"):
    import pandas as pd

    df = pd.DataFrame(records)
    if values not in df.columns:  # records written before standard errors were recorded
        return None
    df = df[(df.metric == metric) & (df.k == k)]
    if df.empty or df[values].isna().all():
        return None
    return df.pivot_table(index=["domain", "segment"], columns="model", values=values)


def format_table(records: list[dict], metric: str = "ndcg", k: int = 10) -> str:
    """One fixed-width table: ``metric@k`` per (domain, segment) row and model column."""
    p = _pivot(records, metric, k)
    return "(no results)" if p is None else f"{metric}@{k}\n" + p.round(4).to_string()


def ratios(records: list[dict], metric: str = "ndcg", k: int = 10) -> list[dict]:
    """crossrec's ``metric@k`` over the best other model, per (domain, segment), with both values' standard
    errors (``crossrec_se``, ``best_se``; None where the records have none)."""
    p = _pivot(records, metric, k)
    se = _pivot(records, metric, k, values="se")
    out = []
    if p is None or OURS not in p.columns:
        return out

    def error(key, model):
        v = se.loc[key].get(model) if se is not None and key in se.index else None
        return None if v is None or v != v else float(v)

    for (domain, segment), row in p.iterrows():
        others = row.drop([m for m in (OURS, ALONE) if m in row.index]).dropna()
        if others.empty or row[OURS] != row[OURS]:
            continue
        best = others.idxmax()
        out.append({"domain": domain, "segment": segment, "crossrec": float(row[OURS]), "best_other": best,
                    "best_value": float(others[best]),
                    "ratio": float(row[OURS] / others[best]) if others[best] > 0 else float("inf"),
                    "crossrec_se": error((domain, segment), OURS), "best_se": error((domain, segment), best)})
    return out


def format_markdown(result: dict) -> str:
    """``quality.md``: the tables, the ratios to the best other model, and the wall times."""
    recs = result["records"]
    lines = ["# crossrec quality benchmark", "",
             f"Data: `{result['data']['raw_dir']}` (domains {', '.join(result['data']['domains'])}; Delta versions "
             f"{result['data']['versions']}). Full ranking over every item of the target domain, test split, "
             "the user's items in that domain excluded.", ""]
    for metric, k in (("ndcg", 10), ("recall", 10), ("ndcg", 20)):
        p = _pivot(recs, metric, k)
        if p is None:
            continue
        cols = list(p.columns)
        lines += [f"## {metric.upper() if metric == 'mrr' else metric.capitalize()}@{k}", "",
                  "| domain | segment | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
        for (d, s), row in p.iterrows():
            lines.append(f"| {d} | {s} | " + " | ".join("" if v != v else f"{v:.4f}" for v in row.values) + " |")
        lines.append("")
    pairs = [r for r in recs if r.get("metric") == "ndcg_paired_diff"]
    if pairs:
        lines += ["## Paired differences with the best baseline (NDCG@10)", "",
                  "Mean over the segment's users of (model - best baseline) and its standard error; a gain counts when "
                  "it is above two standard errors.", "",
                  "| model | domain | segment | vs | difference | s.e. | diff / s.e. | users |",
                  "|---|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['domain']} | {r['segment']} | {r['vs']} | {r['value']:+.4f} | {r['se']:.4f} | "
                  f"{r['value'] / r['se'] if r['se'] else float('nan'):+.1f} | {r['n_users']} |" for r in pairs]
        lines.append("")
    rs = ratios(recs)
    if rs:
        def pm(se):
            return "" if se is None else f" ± {se:.4f}"

        lines += ["## crossrec vs the best other model (NDCG@10)", "",
                  "± one standard error over the segment's users: a ratio whose two values differ by less than about "
                  "two of them is within noise.", "",
                  "| domain | segment | crossrec | best other | ratio |", "|---|---|---:|---|---:|"]
        lines += [f"| {r['domain']} | {r['segment']} | {r['crossrec']:.4f}{pm(r['crossrec_se'])} | {r['best_other']} "
                  f"{r['best_value']:.4f}{pm(r['best_se'])} | {r['ratio']:.2f}x |" for r in rs]
        lines.append("")
    abl = [r for r in result.get("ablations", []) if r.get("metric") == "ndcg_paired_diff"]
    if abl:
        lines += ["## Ablations (NDCG@10)", "",
                  "crossrec trained again without one component (`crossrec-no-NAME`, its Transformer alone "
                  "`crossrec-alone-no-NAME`); per user, the full model minus the ablated one.", "",
                  "| model | vs | domain | segment | full | ablated | ratio | difference ± s.e. | diff / s.e. |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]
        value = {(r["model"], r["domain"], r["segment"]): r["value"] for r in result["records"] + result["ablations"]
                 if r.get("metric") == "ndcg" and r.get("k") == 10}
        for r in abl:
            a, b = value.get((r["model"], r["domain"], r["segment"])), value.get((r["vs"], r["domain"], r["segment"]))
            ratio = f"{a / b:.2f}x" if a is not None and b else ""
            lines.append(f"| {r['model']} | {r['vs']} | {r['domain']} | {r['segment']} | {'' if a is None else f'{a:.4f}'} | "
                         f"{'' if b is None else f'{b:.4f}'} | {ratio} | {r['value']:+.4f} ± {r['se']:.4f} | "
                         f"{r['value'] / r['se'] if r['se'] else float('nan'):+.1f} |")
        lines.append("")
    lines += ["## Wall times (seconds)", "", "| model | train | evaluate | total |", "|---|---:|---:|---:|"]
    for m, total in result["wall_times_s"].items():
        lines.append(f"| {m} | {result['train_times_s'].get(m, 0.0):.1f} | {result['eval_times_s'].get(m, 0.0):.1f} | {total:.1f} |")
    lines += ["", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in result["stages_s"].items()]
    lines += ["", f"Total: {result['total_s']:.0f} s. Config: `{json.dumps(result['config'])}`.", ""]
    return "\n".join(lines)


__all__ = ["QualitySpec", "BenchError", "ABLATIONS", "run_quality", "format_table", "format_markdown", "ratios"]
