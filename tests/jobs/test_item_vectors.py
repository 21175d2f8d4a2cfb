"""Item vectors from the raw format to the model: declared vector columns (CSV text, JSON lines, Parquet lists) ->
bronze.items -> silver.items.vectors (a bad one left out and counted) -> the model's item_vectors."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ray.train")
torch = pytest.importorskip("torch")

from crossrec.data.synthetic import VECTOR_DIM, SyntheticSpec, generate  # noqa: E402
from crossrec.io.readers import read_table  # noqa: E402
from support import TEST_KEY, job_args  # noqa: E402

pytestmark = pytest.mark.spark


def test_vectors_flow_from_raw_files_to_the_model(spark, ray_local, tmp_path):
    from crossrec.model.artifact import load_artifact
    from crossrec_jobs import prepare, train

    raw, lake, key = tmp_path / "raw", tmp_path / "lake", tmp_path / "key"
    key.write_text(TEST_KEY)
    generate(str(raw), SyntheticSpec(users=150, domains=2, items_per_domain=60, seed=4, vector_signal="creator"))
    movies = raw / "movies" / "items.jsonl"  # one vector of the wrong length: left out, counted, the item kept
    lines = movies.read_text().splitlines()
    bad = json.loads(lines[0])
    bad["style_vec"] = [1.0, 2.0]
    movies.write_text("\n".join([json.dumps(bad)] + lines[1:]) + "\n")

    # the tables' checks are left out (CI time): the contract's vectors column is validated by the tests of validate
    assert prepare.main(job_args(raw, lake, key, "--no-validate")) == 0
    items = read_table(str(lake), "silver.items", columns=["domain", "item_id", "vectors"])
    sizes = items.vectors.map(lambda m: {k: len(v) for k, v in dict(m).items()})
    assert (sizes[items.item_id != bad["movie_id"]] == {"image": VECTOR_DIM}).all(), "CSV text and JSON lists alike"
    assert dict(items.vectors[items.item_id == bad["movie_id"]].iloc[0]) == {}
    acc = read_table(str(lake), "ops.accounting")
    flags = json.loads(acc[(acc.stage == "clean") & (acc.table_name == "silver.items") & (acc.domain == "movies")].details.iloc[0])
    assert (flags["vectors"], flags["vectors_invalid"]) == (59, 1)

    args = ["--lake-root", str(lake), "--workers", "1", "--epochs", "1", "--batch-size", "32", "--d-model", "16",
            "--n-layers", "1", "--no-gpu", "--terms", "none", "--no-refit", "--no-register"]
    assert train.main(args + ["--model-root", str(tmp_path / "with")]) == 0
    art = load_artifact(next((tmp_path / "with").glob("2*")))
    assert art.model.config.vector_dim == VECTOR_DIM and art.metrics["vector_modalities"] == [["image", VECTOR_DIM]]
    index = art.item_index.set_index(["domain", "item_id"]).item_idx
    got = art.model.item_encoder.item_vectors
    first = items[items.item_id != bad["movie_id"]].iloc[0]
    raw_vec = np.asarray(dict(first.vectors)["image"])
    assert np.allclose(got[index[(first.domain, first.item_id)]].numpy(), raw_vec / np.linalg.norm(raw_vec)), "unit length"
    assert not got[index[("movies", bad["movie_id"])]].any(), "an item without a vector gets zeros"
