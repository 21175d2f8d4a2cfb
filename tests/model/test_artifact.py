"""Model files: the Transformer's safetensors + config round trip, and a whole artifact folder with its score terms."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from crossrec.model.artifact import load_artifact, load_model, save_artifact, save_model  # noqa: E402
from crossrec.model.config import ModelConfig  # noqa: E402
from crossrec.model.encoder import ItemFeatures  # noqa: E402
from crossrec.model.transformer import CrossDomainTransformer  # noqa: E402
from crossrec.rerank.base import Catalog, TermSet  # noqa: E402
from crossrec.rerank.cold_popularity import ColdPopularityTerm  # noqa: E402
from crossrec.rerank.text_similarity import TextSimilarityTerm  # noqa: E402

DOMAINS = ["books", "movies"]
DOM = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])  # items 1..5 books, 6..9 movies


def tiny_model(**kw) -> CrossDomainTransformer:
    local = np.concatenate([np.arange(5), np.arange(4)])
    rng = np.random.default_rng(0)
    feats = ItemFeatures.from_item_index(np.arange(1, 10), DOM, local, text_emb=rng.normal(size=(9, 8)).astype(np.float32),
                                         item_attr=rng.integers(0, 4, 9), sample_weight=rng.integers(1, 20, 9))
    torch.manual_seed(0)
    return CrossDomainTransformer(ModelConfig(n_items=9, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2,
                                              dropout=0.0, max_seq_len=6, n_attr_values=3, n_negatives=4, **kw), feats)


def batch_of(seqs: list[list[int]], T: int = 6) -> dict:
    item, target = torch.zeros(len(seqs), T, dtype=torch.long), torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        item[b, : len(s) - 1] = torch.tensor(s[:-1])
        target[b, : len(s) - 1] = torch.tensor(s[1:])
    dom = torch.tensor([0, *DOM])
    return {"item_idx": item, "domain_idx": dom[item], "event_ts": 1_600_000_000 + 60 * torch.arange(T).repeat(len(seqs), 1),
            "target_item_idx": target, "target_domain": dom[target]}


def test_save_load_model_round_trip_from_a_wrapped_model(tmp_path):
    from safetensors import safe_open

    model = tiny_model(loss="sampled")
    batch = batch_of([[1, 2, 6, 3, 7], [8, 9, 4], [5, 6]])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(3):
        opt.zero_grad()
        model.calculate_loss(batch).backward()
        opt.step()
    wrapped = torch.nn.DataParallel(model)  # on CPU it only wraps: state_dict keys get the "module." prefix
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    save_model(wrapped, tmp_path / "m")

    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == set(model.state_dict()) and not any(k.startswith("module.") for k in keys)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["n_attr_values"] == 3

    loaded = load_model(tmp_path / "m")
    model.eval()
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        for d in (0, 1):
            torch.testing.assert_close(loaded.full_sort_predict(batch, d), model.full_sort_predict(batch, d), rtol=0, atol=0)
        items = torch.tensor([2, 7, 9])
        torch.testing.assert_close(loaded.predict(batch, items), model.predict(batch, items), rtol=0, atol=0)
    torch.testing.assert_close(loaded.item_logq, model.item_logq)  # derived buffers rebuilt the same
    assert torch.equal(loaded.domain_item_idx, model.domain_item_idx)


def test_an_artifact_holds_the_model_its_terms_catalog_and_metrics_and_loads_with_or_without_the_terms(tmp_path):
    model = tiny_model().eval()
    catalog = Catalog.from_model(model)
    text, pop = TextSimilarityTerm(), ColdPopularityTerm()
    text.fit(None, catalog)
    pop.load_state_dict({"popularity": torch.linspace(-1.0, 1.0, 10)}, catalog)
    terms = TermSet([text, pop], {"text_similarity": {1: {"weight": 2.0, "decay": 0.5}}, "cold_popularity": {0: {"weight": 0.3}}},
                    DOMAINS, report={"fitted_on": "test"})
    index = pd.DataFrame({"item_idx": np.arange(9, 0, -1), "domain": np.array(DOMAINS)[DOM[::-1]],
                          "item_id": [f"i{i}" for i in range(9, 0, -1)], "domain_idx": DOM[::-1],
                          "domain_item_idx": np.concatenate([np.arange(4), np.arange(5)])[::-1]})
    folder = save_artifact(tmp_path / "20250101-abcdef01", model, terms, index, {"input_domains": None, "terms": terms.report})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "item_index.parquet", "metrics.json", "model.safetensors",
                                                        "terms", "terms.json"]
    art = load_artifact(folder)
    assert art.version == "20250101-abcdef01" and art.metrics == {"input_domains": None, "terms": {"fitted_on": "test"}}
    assert art.item_index.item_idx.tolist() == list(range(1, 10)), "sorted by item_idx"
    assert [t.name for t in art.terms.terms] == ["text_similarity", "cold_popularity"] and art.terms.params == terms.params
    torch.testing.assert_close(art.terms.terms[1].popularity, torch.linspace(-1.0, 1.0, 10))
    assert load_artifact(folder, with_terms=False).terms is None, "the model alone"
    alone = save_artifact(tmp_path / "alone", model, None, index, {})
    assert not (alone / "terms.json").exists() and load_artifact(alone).terms is None
    with torch.no_grad():
        b = batch_of([[1, 6, 2], [7, 8]])
        torch.testing.assert_close(art.model.full_sort_predict(b, 1), model.full_sort_predict(b, 1), rtol=0, atol=0)


def test_an_artifact_from_before_the_item_biases_loads_without_them(tmp_path):
    model = tiny_model(item_bias=False).eval()
    folder = save_model(model, tmp_path / "old")
    meta = json.loads((folder / "config.json").read_text())
    del meta["config"]["item_bias"]  # configs written before the key existed
    (folder / "config.json").write_text(json.dumps(meta))
    loaded = load_model(folder)
    assert loaded.item_bias is None
    with torch.no_grad():
        b = batch_of([[1, 6, 2], [7, 8]])
        torch.testing.assert_close(loaded.full_sort_predict(b, 1), model.full_sort_predict(b, 1), rtol=0, atol=0)


def test_a_model_file_with_term_tensors_inside_is_refused(tmp_path):
    """Artifacts from before the terms moved out of the model (co-occurrence buffers in model.safetensors) do not load."""
    from safetensors.torch import load_file, save_file

    save_model(tiny_model(), tmp_path / "old")
    t = load_file(str(tmp_path / "old" / "model.safetensors"))
    t["cooc_weight"] = torch.ones(2)
    save_file(t, str(tmp_path / "old" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="cooc_weight"):
        load_model(tmp_path / "old")
