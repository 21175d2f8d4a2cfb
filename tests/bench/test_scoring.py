"""``crossrec bench scoring`` on a small size: crossrec, ALS, bare torch, the write floor and the model alone are measured on the same users, items and K."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from crossrec.bench.scoring import ScoringSpec, run_scoring  # noqa: E402


@pytest.mark.spark
@pytest.mark.slow
def test_scoring_bench_measures_every_system(spark, tmp_path):
    spec = ScoringSpec(out_dir=str(tmp_path / "out"), users=400, domains=2, items_per_domain=150, events=8, k=5)
    run_scoring(spec, spark=spark)
    d = json.loads((tmp_path / "out" / "scoring.json").read_text())
    systems = {r["system"]: r for r in d["records"]}
    assert set(systems) == {"crossrec", "als_noop", "als_delta", "torch", "write_floor", "model_alone"}
    assert all(r["unit"] == "users/s" and r["value"] > 0 and r["users"] == 400 and r["items"] == 300 for r in d["records"])
    v = {s: r["value"] for s, r in systems.items()}
    assert d["ratios"]["crossrec_vs_als_delta"] == pytest.approx(v["crossrec"] / v["als_delta"])
    assert d["ratios"]["crossrec_vs_als_noop"] == pytest.approx(v["crossrec"] / v["als_noop"])
    assert d["ratios"]["model_alone_vs_torch"] == pytest.approx(v["model_alone"] / v["torch"])
    assert d["score_summary"]["users"] == 400 and d["score_summary"]["rows"] == 400 * 2 * 5
    assert d["model_alone_rows"] == d["score_summary"]["rows"], "the model alone scored the same users as the stage"
    # ALS wrote its K rows per user in gold.recommendations' form (K over all items: at most K a user)
    als = spark.read.format("delta").load(str(tmp_path / "out" / "lake" / "bench" / "als_recommendations"))
    assert d["als_rows"] == als.count() and 0 < d["als_rows"] <= 400 * 5
    assert {"run_date", "user_id", "domain", "item_id", "rank", "score", "reason", "model_version"} <= set(als.columns)
    assert als.groupBy("user_id").count().agg({"count": "max"}).first()[0] == 5
    assert d["als_blas"] in ("JNIBLAS", "VectorBLAS", "JavaBLAS"), d["als_blas"]
    assert (tmp_path / "out" / "scoring.md").exists()
    floor = tmp_path / "out" / "lake" / "bench" / "write_floor"  # the floor rewrote exactly crossrec's rows
    assert spark.read.format("delta").load(str(floor)).count() == d["score_summary"]["rows"]
    from crossrec.model.artifact import load_artifact

    terms = load_artifact(tmp_path / "out" / "lake" / "models" / "bench-scoring").terms  # scored as crossrec train leaves it:
    assert [t.name for t in terms.terms] == ["cooccurrence", "text_similarity", "next_item"]  # with the warm-user terms
    assert set(terms.params) == {t.name for t in terms.terms}  # each term has its settings: all of them active
    for name, per_domain in terms.params.items():
        assert set(per_domain) == set(range(2)), f"{name}: a setting for every domain"
        for d, p in per_domain.items():
            assert p["weight"] > 0, f"{name} is off in domain {d}: {p}"
            assert "decay" not in p or 0 < p["decay"] <= 1, f"{name}'s decay in domain {d} is outside (0, 1]: {p}"
    assert terms.terms[0].indices.numel() > 0 and terms.terms[2].indices.numel() > 0
