"""``crossrec bench quality`` end to end on generated data, and the planted cross-domain signal.

The generator plants topic interests shared across domains. A user cold in a domain (its whole history there
withheld) has nothing for the single-domain model (sasrec: it falls back to popularity), while the
cross-domain model reads the user's other domains: it must rank the held-out item better.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("ray.train")

from crossrec.bench.quality import BenchError, QualitySpec, ratios, run_quality  # noqa: E402
from crossrec.data.synthetic import SyntheticSpec, generate  # noqa: E402
from support import TEST_KEY  # noqa: E402

SMALL = ("--d-model", "64", "--batch-size", "32", "--patience", "3")  # small data: many small steps


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.ray
def test_quality_bench_reports_every_model_and_cross_domain_beats_single_domain_for_cold_users(
        spark, ray_local, tmp_path, monkeypatch):
    from support import job_args
    from crossrec_jobs import prepare

    raw, out, lake, key = tmp_path / "raw", tmp_path / "out", tmp_path / "lake", tmp_path / "key"
    generate(str(raw), SyntheticSpec(users=800, domains=2, items_per_domain=200, seed=3, entity_signal="shared"))
    # the lake is built in this process, on the tests' Spark session (the bench's own job processes would pay
    # three Spark start-ups); the bench takes it as it is (--reuse-lake)
    key.write_text(TEST_KEY)
    monkeypatch.setenv("CROSSREC_COLD_START_FRACTION", "0.3")
    assert prepare.main(job_args(raw, lake, key, "--no-validate")) == 0  # the tables' checks are tested elsewhere
    # crossrec on its default schedule (2 workers); sasrec for one epoch on one worker (a worker group of one starts
    # faster): a user cold in a domain gets its popularity fallback whatever it learnt, and that is what the
    # cold-start assertions compare
    spec = QualitySpec(raw_dir=str(raw), out_dir=str(out), lake_root=str(lake), reuse_lake=True, workers=2,
                       baselines=("pop", "itemknn"), crossrec_args=SMALL,
                       sasrec_args=(*SMALL, "--epochs", "1", "--workers", "1"),
                       extra_env={"CROSSREC_PSEUDONYM_KEY": "", "CROSSREC_PSEUDONYM_KEY_FILE": ""})
    # every step in this process: evaluation on the tests' Spark session, the three trainings on one Ray instance
    # (each job process would pay its imports, and each training a Ray start)
    run_quality(spec, spark=spark)

    q = json.loads((out / "quality.json").read_text())
    recs = q["records"]
    assert {r["model"] for r in recs} == {"crossrec", "crossrec-alone", "sasrec", "pop", "itemknn"}
    assert all({"model", "domain", "segment", "metric", "k", "value"} <= set(r) for r in recs)
    pairs = {(r["model"], r["domain"], r["segment"]): r for r in recs if r["metric"] == "ndcg_paired_diff"}
    assert {(m, s) for m, _, s in pairs} >= {(m, s) for m in ("crossrec", "crossrec-alone") for s in ("all", "cold_start")}
    for (model, domain, segment), pair in pairs.items():  # vs the best baseline (not crossrec's other row), per user
        mean = {m: r["value"] for (m, d, s), r in
                {(r["model"], r["domain"], r["segment"]): r for r in recs if r["metric"] == "ndcg" and r["k"] == 10}.items()
                if (d, s) == (domain, segment)}
        assert pair["vs"] == max((v, m) for m, v in mean.items() if m not in ("crossrec", "crossrec-alone"))[1]
        assert pair["value"] == pytest.approx(mean[model] - mean[pair["vs"]], abs=1e-9)
        assert (pair["se"] >= 0 if pair["n_users"] >= 2 else math.isnan(pair["se"])) and pair["n_users"] == next(
            r["n_users"] for r in recs if (r["model"], r["domain"], r["segment"], r["metric"]) == (model, domain, segment, "ndcg"))
    assert "Paired differences with the best baseline" in (out / "quality.md").read_text()
    assert {r["segment"] for r in recs} >= {"all", "cold_start"}
    assert set(q["wall_times_s"]) == {"crossrec", "crossrec-alone", "sasrec", "pop", "itemknn"}
    assert q["ablations"] == [] and "## Ablations" not in (out / "quality.md").read_text()
    trained = json.loads((next((out / "models" / "crossrec").glob("2*")) / "metrics.json").read_text())
    assert trained["n_entities"] > 0, "the generated entities reach the bench's model"
    assert q["wall_times_s"]["crossrec"] > 0 and q["train_times_s"]["crossrec-alone"] == q["train_times_s"]["crossrec"]
    assert q["config"]["reuse_lake"] and not {"ingest", "clean", "features"} & set(q["stages_s"])
    assert (out / "pseudonym.key").exists(), "no key configured: the bench made a throwaway one"
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    assert set(logs) == {"train-crossrec.log", "train-sasrec-books.log", "train-sasrec-movies.log", "evaluate.log"}
    assert "crossrec.evaluate.stage" in logs["evaluate.log"], "the in-process step's log lines went to its log file"
    md = (out / "quality.md").read_text()
    assert "crossrec vs the best other model" in md and "| sasrec |" in md
    cold = next(r for r in ratios(recs) if r["segment"] == "cold_start")
    assert cold["crossrec_se"] > 0 and cold["best_se"] >= 0, "each ratio carries both values' standard errors"
    assert f"{cold['crossrec']:.4f} ± {cold['crossrec_se']:.4f}" in md

    ndcg = {(r["model"], r["domain"], r["segment"]): r for r in recs if r["metric"] == "ndcg" and r["k"] == 10}
    assert all(r["se"] >= 0 for r in ndcg.values() if r["n_users"] >= 2)
    for domain in q["data"]["domains"]:
        cross, single = ndcg[("crossrec", domain, "cold_start")], ndcg[("sasrec", domain, "cold_start")]
        assert cross["n_users"] == single["n_users"] >= 30, "both models are measured on the same cold users"
        assert cross["value"] > 1.2 * single["value"], (
            f"{domain}: cross-domain {cross['value']:.4f} vs single-domain {single['value']:.4f} for cold users")
        # a single-domain model must not see other domains: with no history in the domain it has nothing
        assert ndcg[("sasrec", domain, "cold_start")]["value"] == pytest.approx(
            ndcg[("pop", domain, "cold_start")]["value"], abs=1e-9), "sasrec falls back to popularity for cold users"

    # the trained crossrec model evaluated again on the same lake, not retrained: the same figures
    ours = next((out / "models" / "crossrec").glob("2*"))
    again = run_quality(QualitySpec(raw_dir=str(raw), out_dir=str(tmp_path / "again"), lake_root=str(lake),
                                    reuse_lake=True, crossrec_model=str(ours), single_domain=False, baselines=("pop",),
                                    extra_env=spec.extra_env), spark=spark)
    assert "train crossrec" not in again["stages_s"] and again["config"]["crossrec_model"] == str(ours)
    assert again["train_times_s"]["crossrec"] == pytest.approx(
        json.loads((ours / "metrics.json").read_text())["wall_time_s"], abs=0.1), "the reused model's own training"
    def own(records):  # the model's own figures (its paired differences depend on the baselines run with it)
        return sorted((r["domain"], r["segment"], r["metric"], r["k"], r["value"]) for r in records
                      if r["model"] == "crossrec" and r["metric"] != "ndcg_paired_diff")

    assert own(again["records"]) == own(recs)

    other = tmp_path / "other-raw"
    generate(str(other), SyntheticSpec(users=20, domains=3, items_per_domain=20, seed=1))
    with pytest.raises(BenchError, match="built from other data"):
        run_quality(QualitySpec(raw_dir=str(other), out_dir=str(tmp_path / "out2"), lake_root=str(lake),
                                reuse_lake=True))


def test_quality_bench_rejects_a_folder_without_dataset_json(tmp_path):
    with pytest.raises(BenchError, match="dataset.json"):
        run_quality(QualitySpec(raw_dir=str(tmp_path), out_dir=str(tmp_path / "out")))


def test_quality_bench_reuses_only_a_built_lake_of_the_same_data(tmp_path):
    raw = tmp_path / "raw"
    generate(str(raw), SyntheticSpec(users=20, domains=2, items_per_domain=20, seed=1))
    with pytest.raises(BenchError, match="--reuse-lake needs --lake-root"):
        run_quality(QualitySpec(raw_dir=str(raw), out_dir=str(tmp_path / "out"), reuse_lake=True))
    with pytest.raises(BenchError, match="has no gold.user_sequences, gold.item_index, gold.item_embeddings"):
        run_quality(QualitySpec(raw_dir=str(raw), out_dir=str(tmp_path / "out"), lake_root=str(tmp_path / "empty"),
                                reuse_lake=True))
    with pytest.raises(BenchError, match=r"unknown ablation\(s\) \['colour'\]; known: \['entities', 'vectors'\]"):
        run_quality(QualitySpec(raw_dir=str(raw), out_dir=str(tmp_path / "out"), ablations=("colour",)))
    with pytest.raises(BenchError, match="--crossrec-model needs --reuse-lake"):  # before any step runs
        run_quality(QualitySpec(raw_dir=str(raw), out_dir=str(tmp_path / "out"), crossrec_model=str(tmp_path / "m")))
    assert not (tmp_path / "out" / "lake").exists()


def test_a_reused_crossrec_model_must_come_from_the_lakes_gold_versions(tmp_path):
    import pyarrow as pa
    from deltalake import write_deltalake

    from crossrec.bench.quality import check_reused_model

    lake = tmp_path / "lake"
    for t in ("item_index", "user_sequences"):
        write_deltalake(str(lake / "gold" / t), pa.table({"x": [1]}))
    write_deltalake(str(lake / "gold" / "item_index"), pa.table({"x": [2]}), mode="append")  # version 1
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(BenchError, match="is not a model artifact"):
        check_reused_model(str(model), str(lake))
    (model / "model.safetensors").write_bytes(b"")
    metrics = {"wall_time_s": 12.5, "data_versions": {"gold.item_index": 1, "gold.user_sequences": 0}}
    (model / "metrics.json").write_text(json.dumps(metrics))
    assert check_reused_model(str(model), str(lake)) == metrics
    write_deltalake(str(lake / "gold" / "user_sequences"), pa.table({"x": [3]}), mode="append")  # the lake moved on
    with pytest.raises(BenchError, match=r"was trained on .*'gold.user_sequences': 0.* is at .*'gold.user_sequences': 1"):
        check_reused_model(str(model), str(lake))


def test_a_step_runs_as_a_job_process_with_its_output_in_its_log_file(tmp_path):
    """What the command line does for every step (the end-to-end test above runs them in its own process)."""
    import os

    from crossrec.bench.quality import _run_step

    env = dict(os.environ)
    assert _run_step("train-help", "crossrec_jobs.train", ["--help"], tmp_path, env) > 0
    assert "--terms" in (tmp_path / "logs" / "train-help.log").read_text()
    with pytest.raises(BenchError, match=r"(?s)step 'train-bad' failed with exit code 2 .* last lines:.*unrecognized arguments: --no-such-flag"):
        _run_step("train-bad", "crossrec_jobs.train", ["--no-such-flag"], tmp_path, env)


def test_the_seed_reaches_the_cold_start_sample_and_every_training(tmp_path, monkeypatch):
    """``--seed`` gives a second cohort of users new to a domain: features and both trainings take it."""
    import pandas as pd

    import crossrec.bench.quality as quality
    import crossrec.io.readers as readers

    raw = tmp_path / "raw"
    generate(str(raw), SyntheticSpec(users=20, domains=2, items_per_domain=20, seed=1))
    calls: dict[str, list[str]] = {}

    def record(name, stage, args, out, env, inline):
        calls[name] = args
        if name.startswith("train-sasrec"):
            raise BenchError("stop here")
        if name == "train-crossrec":
            root = Path(args[args.index("--model-root") + 1])
            (root / "v1").mkdir(parents=True)
            (root / "v1" / "config.json").write_text("{}")
            assert "--no-register" in args, "a benchmark's model never takes the lake's champion"
        return 1.0

    monkeypatch.setattr(quality, "_run_job", record)
    monkeypatch.setattr(readers, "read_table", lambda *a, **k: pd.DataFrame({"domain": ["books", "movies"]}))
    with pytest.raises(BenchError, match="stop here"):
        run_quality(QualitySpec(raw_dir=str(raw), out_dir=str(tmp_path / "out"), seed=7))
    def seed_of(args):
        return args[args.index("--seed") + 1] if "--seed" in args else None

    assert {name: seed_of(args) for name, args in calls.items()} == {
        "ingest": None, "clean": None, "features": "7", "train-crossrec": "7", "train-sasrec-books": "7"}


def test_an_ablation_trains_crossrec_again_without_the_component_and_is_reported_apart(tmp_path, monkeypatch):
    """``--ablation``: one more training with the component's flag (after the bench's own flags, so it wins), both of
    its models evaluated as the full model's pair, and their figures kept out of the records the baselines share."""
    import pandas as pd

    import crossrec.bench.quality as quality
    import crossrec.io.readers as readers

    raw = tmp_path / "raw"
    generate(str(raw), SyntheticSpec(users=20, domains=2, items_per_domain=20, seed=1))
    calls: dict[str, list[str]] = {}
    ndcg = {"crossrec": 0.12, "crossrec-alone": 0.11, "crossrec-no-vectors": 0.10, "crossrec-alone-no-vectors": 0.10,
            "pop": 0.05}

    def run(name, stage, args, out, env, inline):
        calls[name] = args
        if stage == "train":
            root = Path(args[args.index("--model-root") + 1])
            (root / "v1").mkdir(parents=True)
            (root / "v1" / "config.json").write_text("{}")
        if stage == "evaluate":
            names = [a.split("=", 1)[0] for a in args[1:] if "=" in a] + ["pop"]
            records = [{"model": m, "domain": "books", "segment": "cold_start", "metric": "ndcg", "k": 10,
                        "value": ndcg[m], "se": 0.01, "n_users": 40} for m in names]
            paired = [{"model": a, "vs": b, "domain": "books", "segment": "cold_start", "metric": "ndcg_paired_diff",
                       "k": 10, "value": ndcg[a] - ndcg[b], "se": 0.005, "n_users": 40}
                      for a, b in ((p + ":pop").split(":")[:2] for p in args[args.index("--paired") + 1].split(","))]
            folder = Path(args[args.index("--out") + 1])
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps(
                {"records": records, "paired": paired, "versions": {}, "seconds": {m: 1.0 for m in names}}))
        return 2.0

    monkeypatch.setattr(quality, "_run_job", run)
    monkeypatch.setattr(readers, "read_table", lambda *a, **k: pd.DataFrame({"domain": ["books"]}))
    q = run_quality(QualitySpec(raw_dir=str(raw), out_dir=str(tmp_path / "out"), single_domain=False, baselines=("pop",),
                                crossrec_args=("--d-model", "8"), ablations=("vectors",)))

    ablated = calls["train-crossrec-no-vectors"]
    assert ablated[-1] == "--no-vectors" and [a.replace("crossrec-no-vectors", "crossrec") for a in ablated[:-1]] == (
        calls["train-crossrec"]), "the same training as crossrec's, into a root of its own, without the component"
    ev = calls["evaluate"]
    assert ev[ev.index("--paired") + 1] == "crossrec,crossrec-alone,crossrec:crossrec-no-vectors,crossrec-alone:crossrec-alone-no-vectors"
    assert {r["model"] for r in q["records"]} == {"crossrec", "crossrec-alone", "pop"}, "an ablated model is no baseline"
    assert {(r["model"], r.get("vs")) for r in q["ablations"]} == {
        ("crossrec-no-vectors", None), ("crossrec-alone-no-vectors", None),
        ("crossrec", "crossrec-no-vectors"), ("crossrec-alone", "crossrec-alone-no-vectors")}
    assert q["train_times_s"]["crossrec-alone-no-vectors"] == 2.0 and q["config"]["ablations"] == {"vectors": ["--no-vectors"]}
    md = (tmp_path / "out" / "quality.md").read_text()
    assert "| crossrec | crossrec-no-vectors | books | cold_start | 0.1200 | 0.1000 | 1.20x | +0.0200 ± 0.0050 | +4.0 |" in md
