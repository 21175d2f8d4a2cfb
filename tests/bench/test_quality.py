"""``crossrec bench quality`` end to end on generated data, and the planted cross-domain signal.

The generator plants topic interests shared across domains. A user cold in a domain (its whole history there
withheld) has nothing for the single-domain model (sasrec: it falls back to popularity), while the
cross-domain model reads the user's other domains: it must rank the held-out item better.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("ray.train")

from crossrec.bench.quality import BenchError, QualitySpec, run_quality  # noqa: E402
from crossrec.data.synthetic import SyntheticSpec, generate  # noqa: E402

SMALL = ("--d-model", "64", "--batch-size", "32", "--patience", "3")  # small data: many small steps


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.ray
def test_quality_bench_reports_every_model_and_cross_domain_beats_single_domain_for_cold_users(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    generate(str(raw), SyntheticSpec(users=800, domains=2, items_per_domain=200, seed=3))
    spec = QualitySpec(raw_dir=str(raw), out_dir=str(out), workers=2, baselines=("pop", "itemknn"),  # default schedules
                       crossrec_args=SMALL, sasrec_args=SMALL,
                       extra_env={"CROSSREC_COLD_START_FRACTION": "0.3", "CROSSREC_PSEUDONYM_KEY": "",
                                  "CROSSREC_PSEUDONYM_KEY_FILE": ""})
    run_quality(spec)

    q = json.loads((out / "quality.json").read_text())
    recs = q["records"]
    assert {r["model"] for r in recs} == {"crossrec", "sasrec", "pop", "itemknn"}
    assert all({"model", "domain", "segment", "metric", "k", "value"} <= set(r) for r in recs)
    assert {r["segment"] for r in recs} >= {"all", "cold_start"}
    assert set(q["wall_times_s"]) == {"crossrec", "sasrec", "pop", "itemknn"} and q["wall_times_s"]["crossrec"] > 0
    assert (out / "pseudonym.key").exists(), "no key configured: the bench made a throwaway one"
    md = (out / "quality.md").read_text()
    assert "crossrec vs the best other model" in md and "| sasrec |" in md

    ndcg = {(r["model"], r["domain"], r["segment"]): r for r in recs if r["metric"] == "ndcg" and r["k"] == 10}
    for domain in q["data"]["domains"]:
        cross, single = ndcg[("crossrec", domain, "cold_start")], ndcg[("sasrec", domain, "cold_start")]
        assert cross["n_users"] == single["n_users"] >= 30, "both models are measured on the same cold users"
        assert cross["value"] > 1.2 * single["value"], (
            f"{domain}: cross-domain {cross['value']:.4f} vs single-domain {single['value']:.4f} for cold users")
        # a single-domain model must not see other domains: with no history in the domain it has nothing
        assert ndcg[("sasrec", domain, "cold_start")]["value"] == pytest.approx(
            ndcg[("pop", domain, "cold_start")]["value"], abs=1e-9), "sasrec falls back to popularity for cold users"


def test_quality_bench_rejects_a_folder_without_dataset_json(tmp_path):
    with pytest.raises(BenchError, match="dataset.json"):
        run_quality(QualitySpec(raw_dir=str(tmp_path), out_dir=str(tmp_path / "out")))
