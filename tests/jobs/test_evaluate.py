"""The evaluate job's model selection: ``--model`` evaluates an artifact with its score terms, ``--model-alone`` its
Transformer without them, through the same inference path (no Spark: no ALS baseline here)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from deltalake import write_deltalake

torch = pytest.importorskip("torch")

from crossrec.evaluate.stage import evaluate_all, parse_models  # noqa: E402


def test_model_flags_name_artifacts_with_or_without_their_terms():
    assert parse_models([], None) == [("crossrec", None, True)], "default: the latest artifact, with its terms"
    assert parse_models(["a=V1"], None, ["b=V1"]) == [("a", "V1", True), ("b", "V1", False)]
    assert parse_models([], "V2", ["b=/x/V1"]) == [("crossrec", "V2", True), ("b", "/x/V1", False)]
    with pytest.raises(ValueError, match="--model-alone 'b': expected NAME=VERSION or NAME=FOLDER"):
        parse_models([], None, ["b"])


def test_model_alone_evaluates_the_artifacts_transformer_without_its_terms(tmp_path):
    from crossrec.evaluate.protocol import evaluate, load_eval_data, transformer_score_fn
    from crossrec.io.config import resolve_config
    from crossrec.model.artifact import save_artifact
    from crossrec.model.config import ModelConfig
    from crossrec.model.encoder import ItemFeatures
    from crossrec.model.transformer import CrossDomainTransformer
    from crossrec.rerank.base import Catalog, TermSet
    from crossrec.rerank.text_similarity import TextSimilarityTerm

    rng = np.random.default_rng(0)
    n = 12  # books 1..8, movies 9..12
    dom = np.array([0] * 8 + [1] * 4)
    local = np.concatenate([np.arange(8), np.arange(4)])
    index = pd.DataFrame({"domain": np.where(dom == 0, "books", "movies"), "item_id": [f"i{i}" for i in range(1, n + 1)],
                          "item_idx": np.arange(1, n + 1), "domain_idx": dom, "domain_item_idx": local,
                          "category": [None] * n, "train_count": np.ones(n, dtype=np.int64)})
    rows = []
    for u in range(30):
        hist = [int(x) for x in rng.choice(np.arange(1, 9), size=4, replace=False)]
        target = int(rng.choice([i for i in range(1, 9) if i not in hist]))
        ts = list(range(4))
        rows.append((f"u{u}", "train", "*", hist, [0] * 4, ts, None, None, False, 4))
        rows.append((f"u{u}", "test", "books", hist, [0] * 4, ts, target, 5, False, 4))
    lake = tmp_path / "lake"
    write_deltalake(str(lake / "gold" / "item_index"), index)
    write_deltalake(str(lake / "gold" / "user_sequences"), pd.DataFrame(rows, columns=[
        "user_id", "split", "target_domain", "item_idx", "domain_idx", "event_ts", "target_item_idx", "target_ts",
        "cold_start", "history_len"]))
    feats = ItemFeatures.from_item_index(np.arange(1, n + 1), dom, local, text_emb=rng.normal(size=(n, 8)).astype(np.float32))
    torch.manual_seed(0)
    model = CrossDomainTransformer(ModelConfig(n_items=n, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2), feats)
    text = TextSimilarityTerm()
    text.fit(None, Catalog.from_model(model))
    terms = TermSet([text], {"text_similarity": {0: {"weight": 6.0, "decay": 0.8}}}, ["books", "movies"])
    folder = save_artifact(lake / "models" / "20250101-abcdef01", model, terms, index.iloc[:, :5], {"input_domains": None})

    cfg = resolve_config(overrides={"lake_root": str(lake), "validate": False})
    records, _ = evaluate_all(cfg, [], None, models=[("with", str(folder), True), ("alone", str(folder), False)])
    ndcg = {r["model"]: r["value"] for r in records if r["metric"] == "ndcg" and r["k"] == 10 and r["segment"] == "all"}
    data = load_eval_data(str(lake))
    want = {name: next(r["value"] for r in evaluate(name, transformer_score_fn(model, data, t), data)
                       if r["metric"] == "ndcg" and r["k"] == 10 and r["segment"] == "all")
            for name, t in (("with", terms), ("alone", None))}
    assert ndcg == pytest.approx(want, abs=1e-9) and ndcg["with"] != ndcg["alone"], (ndcg, want)
    assert {r["model_version"] for r in records} == {"20250101-abcdef01"}
