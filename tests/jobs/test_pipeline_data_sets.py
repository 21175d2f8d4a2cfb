"""Ingest -> clean on whole data sets: the generator's dirty synthetic set and the real Food+Kitchen set."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from crossrec.data.importers import import_amazon_food_kitchen
from crossrec.data.synthetic import SyntheticSpec, generate
from crossrec.io.readers import read_table
from crossrec_jobs import clean as clean_job
from crossrec_jobs import ingest as ingest_job
from support import SHARED_DATA, job_args

pytestmark = pytest.mark.spark
FOOD_KITCHEN = SHARED_DATA / "amazon-food-kitchen"


def run_both(raw: Path, lake: Path, key_file: Path, *extra: str) -> None:
    args = job_args(raw, lake, key_file, *extra)
    assert ingest_job.main(args) == 0
    assert clean_job.main(args) == 0


def test_generated_bad_rows_are_quarantined_exactly(spark, tmp_path, key_file):
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    manifest = generate(raw, SyntheticSpec(users=300, items_per_domain=60, dirty_rate=0.05, seed=3))
    run_both(raw, lake, key_file, "--run-date", "2025-01-01")  # generated times end 2024-12-31
    q = read_table(str(lake), "silver.quarantine")
    inter = read_table(str(lake), "silver.interactions")
    acc = read_table(str(lake), "ops.accounting")
    for domain, info in manifest["domains"].items():
        want = {r: n for r, n in info["interactions"]["bad_rows"].items() if r != "duplicate" and n}
        if info["format"] == "parquet" and "unparseable_timestamp" in want:
            # a typed Parquet column cannot hold "not-a-date": the generator writes null there
            want["missing_timestamp"] = want.pop("unparseable_timestamp")
        got = Counter(q[(q.domain == domain) & (q.source_table == "bronze.interactions")].reason)
        assert dict(got) == want, domain
        assert (inter.domain == domain).sum() == info["interactions"]["clean_rows"]
        row = acc[(acc.stage == "clean") & (acc.table_name == "silver.interactions") & (acc.domain == domain)].iloc[0]
        assert row.duplicates == info["interactions"]["bad_rows"]["duplicate"]
        assert row.rows_in == info["interactions"]["rows"] == row.rows_out + row.quarantined + row.duplicates


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not FOOD_KITCHEN.is_dir(), reason=f"real data not present at {FOOD_KITCHEN}")
def test_food_kitchen_end_to_end(spark, tmp_path, key_file):
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    import_amazon_food_kitchen(FOOD_KITCHEN, raw)
    run_both(raw, lake, key_file)
    inter = read_table(str(lake), "silver.interactions", columns=["user_id", "domain"])
    assert len(inter) == 436_127
    assert inter.domain.value_counts().to_dict() == {"kitchen": 337_811, "food": 98_316}
    assert len(read_table(str(lake), "silver.items", columns=["item_id"])) == 36_298
    assert len(read_table(str(lake), "silver.quarantine")) == 0
    # users of train_overlap/valid/test are active in both domains (7,501 + 960 + 937 of them at most)
    both = inter.groupby("user_id").domain.nunique()
    assert 8_000 < (both == 2).sum() <= 9_398
    reports = json.loads((lake / "_reports" / "clean-2024-06-30" / "silver.interactions.json").read_text())
    assert reports["success"] and reports["rows"] == 436_127
