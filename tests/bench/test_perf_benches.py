"""``crossrec bench ingest`` and ``crossrec bench training`` on small sizes: they run and report what they promise."""
from __future__ import annotations

import json

import pytest


@pytest.mark.spark
@pytest.mark.slow
def test_ingest_bench_compares_crossrec_with_a_plain_copy(spark, tmp_path):
    from crossrec.bench.ingest import IngestSpec, run_ingest

    # no warm-up: this test checks what the bench reports, not its figures
    run_ingest(IngestSpec(out_dir=str(tmp_path / "out"), users=300, domains=2, warmup=False), spark=spark)
    d = json.loads((tmp_path / "out" / "ingest.json").read_text())
    crossrec, plain = d["records"]
    assert crossrec["unit"] == plain["unit"] == "rows/s" and crossrec["value"] > 0 and plain["value"] > 0
    assert crossrec["rows"] == plain["rows"], "both read the same raw rows"
    assert d["ratio"] == pytest.approx(crossrec["value"] / plain["value"])


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.slow
def test_training_bench_reports_one_and_two_workers_and_the_encoder(scored_lake, tmp_path):
    """On the session's prepared lake (--lake-root: the bench's own generate -> prepare is the same jobs); the lake
    is only read: models and Ray storage go under --out."""
    pytest.importorskip("torch")
    from crossrec.bench.training import TrainingSpec, run_training
    from crossrec.io.readers import read_table

    lake = scored_lake["lake"]
    latest = (lake / "models" / "_latest").read_text()
    run_training(TrainingSpec(out_dir=str(tmp_path / "out"), lake_root=str(lake), epochs=1, encoder_items=64))
    d = json.loads((tmp_path / "out" / "training.json").read_text())
    one, two, enc = d["records"]
    assert (one["stage"], two["stage"]) == ("train 1 worker", "train 2 workers")
    assert one["value"] > 0 and two["value"] > 0 and 0 <= one["data_share"] <= 1 and 0 <= two["data_share"] <= 1
    assert enc["unit"] == "items/s" and enc["items"] == 64 and enc["value"] > 0
    users = read_table(str(lake), "gold.user_sequences", columns=["user_id"]).user_id.nunique()
    assert one["users"] == d["users"] == users and d["domains"] == 2
    assert (lake / "models" / "_latest").read_text() == latest, "the bench wrote no model into the lake"


def test_training_bench_needs_a_prepared_lake(tmp_path):
    from crossrec.bench.quality import BenchError
    from crossrec.bench.training import TrainingSpec, run_training

    with pytest.raises(BenchError, match="has no gold.item_index, gold.user_sequences, gold.item_embeddings, silver.items"):
        run_training(TrainingSpec(out_dir=str(tmp_path / "out"), lake_root=str(tmp_path / "empty")))
