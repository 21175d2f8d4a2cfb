"""Training stage on Ray Train, on tiny gold tables written with deltalake (no Spark).

The planted signal: two topics, every item's text vector points at its topic, every user keeps to one topic
in both domains. A model that learns "same topic as the history" ranks the target among ~half of the
domain's candidates; a random ranking among all of them.

Ray runs here are small on purpose (2 workers x 0.5 CPU, d_model=32, ~200 users): the machine has 2 cores.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ray.train")
pa = pytest.importorskip("pyarrow")
from deltalake import DeltaTable, write_deltalake  # noqa: E402

from crossrec.quality.contracts import load_contract  # noqa: E402
from crossrec.train.checkpoint import (  # noqa: E402
    flatten_optimizer_state,
    read_checkpoint,
    unflatten_optimizer_state,
    write_checkpoint,
)
from crossrec.train.config import TrainConfig, lr_at, model_version  # noqa: E402
from crossrec.train.data import sample_users  # noqa: E402
from crossrec.train.driver import check_worker_resources, ray_address, train  # noqa: E402
from crossrec.train.faults import FailOnce  # noqa: E402
from crossrec.train.windows import collate_train, training_windows  # noqa: E402

DOMAINS = ("books", "movies")
T0 = 1_600_000_000
DAY = 86_400
TINY = dict(workers=2, d_model=32, n_layers=1, n_heads=2, batch_size=32, lr=3e-3, dropout=0.0, max_seq_len=20,
            log_every=2)


# --------------------------------------------------------------------------------------------- gold tables
def _arrow_type(name: str):
    name = name.replace(" ", "")
    simple = {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "boolean": pa.bool_(),
              "float": pa.float32(), "double": pa.float64()}
    if name in simple:
        return simple[name]
    assert name.startswith("array<") and name.endswith(">"), f"no arrow type for contract type {name!r}"
    return pa.list_(_arrow_type(name[6:-1]))


def write_gold(lake: Path, table: str, rows: list[dict]) -> int:
    """Write ``rows`` as the Delta table ``table`` under ``lake``, typed and partitioned by its contract."""
    c = load_contract(table)
    schema = pa.schema([pa.field(col.name, _arrow_type(col.type), col.nullable) for col in c.columns])
    data = pa.Table.from_pylist(rows, schema=schema)
    layer, _, name = table.partition(".")
    path = lake / layer / name
    write_deltalake(str(path), data, partition_by=list(c.partition_by) or None, mode="overwrite")
    return DeltaTable(str(path)).version()


def build_planted_lake(lake: Path, *, users: int = 200, items_per_topic: int = 15, events: int = 12, seed: int = 0,
                       hex_ids: bool = False) -> dict:
    """gold.item_index, gold.item_embeddings and gold.user_sequences (train, valid and test rows) with a
    topic signal. Returns the facts the tests check against (random-ranking NDCG@10 of the valid rows)."""
    rng = np.random.default_rng(seed)
    topics = 2
    items = []  # (domain, item_id, item_idx, domain_idx, domain_item_idx, topic)
    for d_idx, dom in enumerate(DOMAINS):
        for j in range(topics * items_per_topic):
            items.append((dom, f"{dom[0]}{j:03d}", len(items) + 1, d_idx, j, j % topics))
    topic_of = np.array([0] + [t for *_, t in items])
    dom_of = np.array([0] + [d for _, _, _, d, _, _ in items])
    by = {(d, t): [i[2] for i in items if i[3] == d and i[5] == t] for d in range(len(DOMAINS)) for t in range(topics)}

    seq_rows, train_count = [], np.zeros(len(items) + 1, dtype=np.int64)
    valid_random_ndcg = []
    for u in range(users):
        user = hashlib.sha256(f"u{u}".encode()).hexdigest() if hex_ids else f"u{u:04d}"  # hex: as pseudonyms are
        topic = u % topics
        pools = {d: list(rng.permutation(by[(d, topic)])) for d in range(len(DOMAINS))}
        order = rng.permutation(np.arange(events) % len(DOMAINS))  # events / 2 in each domain, interleaved
        hist = [pools[d].pop() for d in order]
        ts = [T0 + DAY * k for k in range(events)]
        split = ["train"] * events
        for d in range(len(DOMAINS)):  # leave-last-out per domain: last = test, the one before = valid
            pos = [k for k, i in enumerate(hist) if dom_of[i] == d]
            assert len(pos) >= 3, "every user needs train, valid and test events in every domain"
            split[pos[-1]], split[pos[-2]] = "test", "valid"
        train_pos = [k for k in range(events) if split[k] == "train"]
        for k in train_pos:
            train_count[hist[k]] += 1
        seq_rows.append(_seq_row(user, "train", "*", [hist[k] for k in train_pos], [ts[k] for k in train_pos], dom_of, None, None))
        for k in range(events):
            if split[k] == "train":
                continue
            visible = [j for j in range(k) if split[j] == "train" or (split[k] == "test" and split[j] == "valid")]
            h = [hist[j] for j in visible]
            seq_rows.append(_seq_row(user, split[k], DOMAINS[dom_of[hist[k]]], h, [ts[j] for j in visible], dom_of, hist[k], ts[k]))
            if split[k] == "valid":
                n_cand = 2 * items_per_topic - sum(dom_of[i] == dom_of[hist[k]] for i in h)
                valid_random_ndcg.append(sum(1 / math.log2(r + 1) for r in range(1, min(10, n_cand) + 1)) / n_cand)

    index_rows = [{"domain": d, "item_id": iid, "item_idx": ix, "domain_idx": di, "domain_item_idx": dj,
                   "category": f"topic{t}", "train_count": int(train_count[ix])} for d, iid, ix, di, dj, t in items]
    centers = rng.normal(size=(topics, 384))
    emb_rows = []
    for d, iid, ix, di, dj, t in items:
        v = centers[t] + 0.3 * rng.normal(size=384)
        emb_rows.append({"domain": d, "item_id": iid, "text_hash": f"h{ix}", "encoder": "test-topics",
                         "embedding": (v / np.linalg.norm(v)).astype(np.float32).tolist()})
    versions = {
        "gold.item_index": write_gold(lake, "gold.item_index", index_rows),
        "gold.item_embeddings": write_gold(lake, "gold.item_embeddings", emb_rows),
        "gold.user_sequences": write_gold(lake, "gold.user_sequences", seq_rows),
    }
    return {"versions": versions, "random_ndcg": float(np.mean(valid_random_ndcg)), "n_items": len(items),
            "topic_of": topic_of}


def _seq_row(user, split, target_domain, items, ts, dom_of, target, target_ts) -> dict:
    return {"user_id": user, "split": split, "target_domain": target_domain, "item_idx": [int(i) for i in items],
            "domain_idx": [int(dom_of[i]) for i in items], "event_ts": [int(t) for t in ts],
            "target_item_idx": None if target is None else int(target), "target_ts": target_ts,
            "cold_start": bool(target is not None and not any(dom_of[i] == dom_of[target] for i in items)),
            "history_len": len(items)}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict]:
    lake = tmp_path_factory.mktemp("lake")
    return lake, build_planted_lake(lake)


def _artifact(lake: Path) -> tuple[Path, dict]:
    """The newest artifact a train run wrote under <lake>/models."""
    folder = max((d for d in (lake / "models").iterdir() if (d / "config.json").is_file()), key=lambda d: d.stat().st_mtime)
    return folder, json.loads((folder / "metrics.json").read_text())


# ------------------------------------------------------------------------------------- pure functions
def test_training_windows_predict_every_target_once():
    hist = np.arange(1, 12)  # 11 events -> 10 targets
    tab = training_windows([hist, [5], [7, 8]], [np.zeros(11), [0], [1, 1]], [np.arange(11), [3], [1, 2]], max_seq_len=4)
    rows = tab.to_pylist()
    assert all(1 <= len(r["item_idx"]) == len(r["target_item_idx"]) <= 4 for r in rows), rows
    for r in rows:  # next-item windows: the target of a position is the following event
        assert r["target_item_idx"][:-1] == r["item_idx"][1:]
    targets = sorted(t for r in rows for t in r["target_item_idx"])
    assert targets == sorted([*range(2, 12), 8]), "every target of every history exactly once; 1-event rows dropped"
    assert rows[0]["item_idx"] == [7, 8, 9, 10] and rows[0]["target_item_idx"] == [8, 9, 10, 11], "newest window first"
    assert training_windows([hist], [np.zeros(11)], [np.arange(11)], 4, cold_views=True).equals(
        training_windows([hist], [np.zeros(11)], [np.arange(11)], 4)), "one-domain history: no cold-domain view"


def test_cold_domain_views_predict_a_domain_from_the_other_domains_only():
    items, doms, ts = np.arange(1, 8), np.array([0, 1, 1, 0, 1, 0, 0]), np.arange(10, 17)
    rows = training_windows([items], [doms], [ts], max_seq_len=50, cold_views=True).to_pylist()
    assert len(rows) == 3, "one next-item window + one view per domain"
    assert rows[0]["target_item_idx"] == [2, 3, 4, 5, 6, 7]
    view0, view1 = rows[1], rows[2]  # views in domain order; view1: domain 1 held out: inputs are the domain-0 events, targets the domain-1 event right after each
    assert view1["item_idx"] == [1, 4, 6, 7] and view1["domain_idx"] == [0, 0, 0, 0] and view1["event_ts"] == [10, 13, 15, 16]
    assert view1["target_item_idx"] == [2, 5, 0, 0], "item 3 follows a domain-1 event: no domain-0 state precedes it directly"
    assert view0["item_idx"] == [2, 3, 5] and view0["target_item_idx"] == [0, 4, 6]
    # long histories: views are cut into windows of max_seq_len positions, those without a target skipped
    long_items = np.arange(1, 21)
    long_doms = np.array([0, 1] * 10)
    n_next = training_windows([long_items], [long_doms], [long_items], 3).num_rows
    views = training_windows([long_items], [long_doms], [long_items], 3, cold_views=True).to_pylist()[n_next:]
    assert all(len(set(r["domain_idx"])) == 1 for r in views), "a view's inputs are one domain's events here"
    assert all(len(r["item_idx"]) <= 3 and any(r["target_item_idx"]) for r in views)
    held = sorted(t for r in views for t in r["target_item_idx"] if t)
    assert held == list(range(2, 21)), "every event preceded by another domain's event is a view target once"


def test_collate_right_pads_targets():
    tab = pa.table({"item_idx": [[1, 2], [4]], "domain_idx": [[0, 1], [1]], "event_ts": [[10, 20], [5]],
                    "target_item_idx": [[2, 3], [0]]})
    item_domain = np.array([0, 0, 1, 0, 1, 1])
    b = collate_train(tab, item_domain)
    assert b["item_idx"].tolist() == [[1, 2], [4, 0]]
    assert b["target_item_idx"].tolist() == [[2, 3], [0, 0]]
    assert b["target_domain"][0].tolist() == [1, 0]
    assert b["event_ts"].tolist() == [[10, 20], [5, 0]] and b["domain_idx"].tolist() == [[0, 1], [1, 0]]
    # a slice of a table and a table of several chunks (what a shuffled pool's take gives) pad the same way
    longer = pa.concat_tables([tab, tab])
    assert collate_train(longer.slice(1, 2), item_domain)["item_idx"].tolist() == [[4, 0], [1, 2]]
    assert collate_train(longer, item_domain)["target_item_idx"].tolist() == [[2, 3], [0, 0], [2, 3], [0, 0]]
    with pytest.raises(AssertionError, match="event_ts"):
        collate_train(tab.set_column(2, "event_ts", pa.array([[10], [5, 6]])), item_domain)


def test_optimizer_state_round_trips_without_pickle():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    json.dumps(meta)  # the non-tensor part is plain JSON
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(unflatten_optimizer_state(tensors, meta))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(v, b["state"][pid][k]), (pid, k)


def test_a_checkpoint_of_other_model_code_is_refused_with_what_differs(tmp_path):
    """A run folder left by other model code under the same training config (same fingerprint) must not be
    resumed into a model it does not fit: a clear error, not a state_dict traceback on every restart."""
    from crossrec.model.config import ModelConfig
    from crossrec.model.encoder import ItemFeatures
    from crossrec.model.transformer import CrossDomainTransformer

    ids = torch.arange(5)
    feats = ItemFeatures(torch.randn(5, 8), torch.tensor([0, 0, 0, 1, 1]), torch.zeros(5, dtype=torch.long), [ids[1:3], ids[3:]])
    old, new = (CrossDomainTransformer(ModelConfig(n_items=4, n_domains=2, text_dim=8, d_model=8, n_layers=n), feats)
                for n in (1, 2))
    write_checkpoint(tmp_path / "ckpt", old, torch.optim.AdamW(old.parameters()), {"epoch": 0})
    assert read_checkpoint(tmp_path / "ckpt", old, torch.optim.AdamW(old.parameters()))["epoch"] == 0
    with pytest.raises(ValueError, match=r"ckpt does not fit this model \(missing \d+ \['encoder.layers.1.*unexpected 0 \[\]"):
        read_checkpoint(tmp_path / "ckpt", new, torch.optim.AdamW(new.parameters()))


def test_ray_address_is_the_flag_then_ray_address_env_then_a_new_local_instance(monkeypatch):
    """Never Ray's own default (None), which would attach to whatever cluster `ray start` left on the machine."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) == "local"
    assert ray_address("auto") == "auto" and ray_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    assert ray_address(None) == "10.0.0.7:6379"
    assert ray_address("10.0.0.5:6379") == "10.0.0.5:6379", "the flag wins over the environment"


def test_a_worker_group_the_instance_cannot_hold_is_refused_on_a_local_instance_and_logged_on_a_cluster(caplog):
    from crossrec.io.config import ConfigError

    check_worker_resources(4, False, 0.5, {"CPU": 2.0}, fixed=True)  # exactly fits
    check_worker_resources(2, True, 0.5, {"CPU": 2.0, "GPU": 2.0}, fixed=True)
    with pytest.raises(ConfigError, match=r"8 worker\(s\) x 0.5 CPU need 4 CPU\(s\); the Ray instance has 2: "
                                          r"use fewer --workers or a smaller --cpus-per-worker"):
        check_worker_resources(8, False, 0.5, {"CPU": 2.0}, fixed=True)
    with pytest.raises(ConfigError, match=r"need 2 GPU\(s\); the Ray instance has 1: use fewer --workers$"):
        check_worker_resources(2, True, 0.5, {"CPU": 8.0, "GPU": 1.0}, fixed=True)
    with caplog.at_level("WARNING", logger="crossrec.train.driver"):
        check_worker_resources(8, False, 1.0, {"CPU": 2.0}, fixed=False)  # a cluster may grow: Ray Train waits
    assert "need 8 CPU(s); the Ray instance has 2" in caplog.text and "waits until the cluster has them" in caplog.text


def test_lr_schedules_decay_from_lr_to_zero_over_the_run():
    total = 100
    assert [lr_at(1e-3, "constant", s, total) for s in (0, 50, 100, 500)] == [1e-3] * 4
    for schedule in ("linear", "cosine"):
        lrs = [lr_at(1e-3, schedule, s, total) for s in range(total + 1)]
        assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
        assert all(a >= b for a, b in zip(lrs, lrs[1:])), f"{schedule} must never rise"
        assert lr_at(1e-3, schedule, total + 7, total) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at 0
    assert lr_at(1e-3, "linear", 25, total) == pytest.approx(7.5e-4)
    assert lr_at(1e-3, "cosine", 50, total) == pytest.approx(5e-4)  # half way down the half cosine
    with pytest.raises(AssertionError, match="lr_schedule"):
        TrainConfig(lake_root="/x", lr_schedule="step")


def test_auto_loss_samples_only_once_a_domain_outgrows_twice_the_negatives():
    cfg = TrainConfig(lake_root="/x", n_negatives=100)
    assert cfg.loss == "auto"
    assert cfg.model_config(5000, 2, 8, largest_domain=200).loss == "softmax"
    sampled = cfg.model_config(5000, 2, 8, largest_domain=201)
    assert (sampled.loss, sampled.n_negatives) == ("sampled", 100)
    assert cfg.model_config(201, 1, 8).loss == "sampled", "without domain sizes: the whole catalog"
    assert TrainConfig(lake_root="/x", loss="softmax").model_config(10**6, 1, 8).loss == "softmax", "an explicit loss stays"
    with pytest.raises(AssertionError, match="loss must be one of"):
        TrainConfig(lake_root="/x", loss="bpr")


def test_model_version_depends_on_config_and_data_not_paths():
    v = {"gold.item_index": 1, "gold.user_sequences": 3}
    a = TrainConfig(lake_root="/x", lr=1e-3)
    assert model_version(a, v) == model_version(TrainConfig(lake_root="/elsewhere", lr=1e-3, max_failures=5), v)
    assert model_version(a, v) != model_version(TrainConfig(lake_root="/x", lr=2e-3), v)
    assert model_version(a, v) != model_version(TrainConfig(lake_root="/x", lr=1e-3, lr_schedule="cosine"), v)
    assert model_version(a, v) != model_version(a, {**v, "gold.user_sequences": 4})
    date, _, digest = model_version(a, v).partition("-")
    assert len(date) == 8 and len(digest) == 8
    assert model_version(a, v) != model_version(TrainConfig(lake_root="/x", lr=1e-3, terms=()), v), "the terms fitted"


def test_terms_default_to_every_registered_term_and_unknown_names_are_refused():
    from crossrec.rerank.base import registered

    assert TrainConfig(lake_root="/x").terms == tuple(registered()), "named in the config: the fingerprint covers them"
    assert TrainConfig(lake_root="/x", terms=["next_item"]).terms == ("next_item",)
    assert TrainConfig(lake_root="/x", terms=()).terms == ()
    with pytest.raises(AssertionError, match=r"unknown score term\(s\) \['cooc'\]"):
        TrainConfig(lake_root="/x", terms=("cooc",))


# ------------------------------------------------------------------------------------------- Ray runs
@pytest.mark.ray
@pytest.mark.slow
def test_train_job_writes_artifact_that_beats_random(ray_local, planted, capsys):
    from crossrec.model.artifact import load_artifact
    from crossrec.rerank.base import STAND_IN_FILE, registered
    from support import best_that_counts
    from crossrec_jobs.train import main

    lake, facts = planted
    rc = main(["--lake-root", str(lake), "--workers", "2", "--epochs", "3", "--batch-size", "32", "--lr", "3e-3",
               "--d-model", "32", "--n-layers", "1", "--max-seq-len", "20", "--patience", "3", "--no-gpu"])
    assert rc == 0
    folder, metrics = _artifact(lake)
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "terms.json", "terms",
                                                  "item_index.parquet", "metrics.json", "MLmodel"}
    usable = [n for n in registered() if n not in ("entity", "cold_entity")]  # the planted lake has no entities
    assert {p.name for p in (folder / "terms").iterdir()} == {f"{name}.safetensors" for name in usable} | {STAND_IN_FILE}
    assert metrics["data_versions"] == facts["versions"], "trained on the pinned (here: newest) versions"
    assert metrics["epochs_run"] == 3 and [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    assert metrics["resumed_at_epochs"] == []
    ndcg = metrics["valid"]["valid_ndcg@10"]
    assert metrics["valid"]["valid_rows"] == 200 * len(DOMAINS), "every valid row scored exactly once over 2 ranks"
    assert ndcg == max(h["valid_ndcg@10"] for h in metrics["history"]), "the artifact is the best epoch"
    assert ndcg > 1.3 * facts["random_ndcg"], (ndcg, facts["random_ndcg"])
    assert metrics["samples_per_s"] > 0 and metrics["wall_time_s"] > 0

    art = load_artifact(folder)
    model, terms = art.model, art.terms
    from safetensors.torch import load_file

    keys = load_file(str(folder / "model.safetensors")).keys()
    assert not any(k.startswith("module.") for k in keys), "DDP prefix stripped"
    assert model.config.n_items == facts["n_items"] and model.config.d_model == 32
    idx = art.item_index
    assert list(idx.columns) == ["item_idx", "domain", "item_id", "domain_idx", "domain_item_idx"]
    assert idx.item_idx.tolist() == list(range(1, facts["n_items"] + 1))
    # every registered term, each domain's parameters the best setting validation tried, in the artifact as reported
    report = metrics["terms"]
    assert report["fitted_on"] == "train events + valid targets" and list(report["terms"]) == list(registered())
    assert all("no attribute entities" in report["terms"][n]["skipped"] for n in ("entity", "cold_entity"))
    assert [t.name for t in terms.terms] == usable and terms.report == report
    for name in usable:
        entry = report["terms"][name]
        assert sorted(entry["domains"]) == sorted(DOMAINS), name
        for d, rec in entry["domains"].items():
            chosen = tuple(rec["params"].values())
            assert (not rec["valid_ndcg@10"] and rec["params"]["weight"] == 0.0) or chosen == best_that_counts(rec), (name, d, rec)
            assert terms.params[name][DOMAINS.index(d)] == rec["params"], (name, d)
            assert rec["rows"] <= 200, "a sample of the domain's validation rows"
    cooc = report["terms"]["cooccurrence"]
    assert cooc["options"] == {"k": 200, "shrink": 10.0}
    assert all(len(r["valid_ndcg@10"]) == 1 + 7 * 4 for r in cooc["domains"].values()), "weight 0 once, others x decays"
    by_name = {t.name: t for t in terms.terms}
    assert by_name["cooccurrence"].indices.numel() > 0 and by_name["next_item"].indices.numel() > 0, "pairs and transitions"
    # the artifact is the refit: the selected epochs again on train events + valid targets
    assert metrics["refit"]["epochs"] == metrics["best_epoch"] + 1
    assert metrics["refit"]["train_windows"] > metrics["train_windows"], "the valid targets add windows"
    from crossrec.evaluate.protocol import evaluate, load_eval_data, transformer_score_fn

    data = load_eval_data(str(lake), versions=metrics["data_versions"], split="valid")
    recs = [r for r in evaluate("crossrec", transformer_score_fn(model, data), data)
            if r["metric"] == "ndcg" and r["k"] == 10 and r["segment"] == "all"]
    assert np.mean([r["value"] for r in recs]) > 1.3 * facts["random_ndcg"], recs
    out = capsys.readouterr().out
    assert str(folder) in out and "ndcg@10" in out.lower()
    for name in registered():  # the fit's report, one line per term and domain; one for a term left out
        assert sum(line.startswith(f"term {name} ") for line in out.splitlines()) == (len(DOMAINS) if name in usable else 1), out
    _check_registry_and_promotion_gate(lake, folder, metrics, out)


def _check_registry_and_promotion_gate(lake: Path, folder: Path, metrics: dict, out: str) -> None:
    """The job registered its artifact as version 1 of `crossrec` with an MLflow run, and made it the champion (the
    first model); a clearly worse model (the same artifact with random weights and no terms) does not take the
    alias through the gate, and does with --force-promote."""
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from crossrec.io.config import resolve_config
    from crossrec.io.registry import Registry, artifact_folder
    from crossrec.model.artifact import load_artifact, save_artifact
    from crossrec.train.stage import register_and_promote

    registry = Registry(str(lake))
    (v1,) = registry.versions()
    assert v1.number == 1 and v1.is_champion and v1.folder == str(folder) and v1.model_version == folder.name
    assert "registered:       crossrec version 1" in out and "champion:         version 1 -- no champion yet" in out
    run = registry.client.get_run(v1.run_id)
    assert run.data.metrics["selected_valid_ndcg_at_10"] == pytest.approx(metrics["valid"]["valid_ndcg@10"])
    assert run.data.params["model.d_model"] == "32" and run.data.params["train.workers"] == "2"
    history = registry.client.get_metric_history(v1.run_id, "valid_ndcg_at_10")
    assert sorted(m.step for m in history) == [0, 1, 2, 3][: len(history)] and len(history) >= 3, "per-epoch metrics"
    assert artifact_folder(str(lake), None) == str(folder) == artifact_folder(str(lake), "models:/crossrec@champion")

    # the registered version is a pyfunc model: its predict is the scoring path
    mlflow.set_tracking_uri(registry.uri)
    mlflow.set_registry_uri(registry.uri)
    model = mlflow.pyfunc.load_model("models:/crossrec@champion")
    art = load_artifact(folder)
    keys = (art.item_index.domain + ":" + art.item_index.item_id).tolist()
    recs = model.predict(pd.DataFrame({"history": [keys[:3], []]}), params={"k": 4})
    assert len(recs) == 2 * len(DOMAINS) * 4 and set(recs.domain) == set(DOMAINS)
    assert not set(recs[recs.row == 0].item_id) & set(art.item_index.item_id[:3]), "history items are not recommended"
    assert set(recs[recs.row == 1].reason) == {"popularity"}

    worse = folder.parent / "random-weights"
    torch.manual_seed(0)
    for p in art.model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    save_artifact(worse, art.model, None, art.item_index, {**metrics, "model_version": worse.name, "terms": None}, art.entities)
    cfg = resolve_config(overrides={"lake_root": str(lake)})
    mv, decision = register_and_promote(cfg, worse, metrics, force=False)
    assert mv.number == 2 and not decision.promoted and "worse than champion version 1" in decision.reason, decision
    assert registry.champion().number == 1 and len(decision.comparisons) == len(DOMAINS)
    mv, decision = register_and_promote(cfg, worse, metrics, force=True)  # registered already: the same version
    assert mv.number == 2 and decision.promoted and registry.champion().number == 2
    assert [v.number for v in registry.versions()] == [2, 1]


@pytest.mark.ray
def test_train_job_refuses_more_workers_than_its_local_ray_instance_has(planted):
    """In a process of its own (this module's Ray instance is not the job's): exit 2 and a clear message at once,
    where Ray Train would wait for the CPUs forever."""
    lake, _ = planted
    workers = (os.cpu_count() or 1) + 1  # one CPU each: more than any local instance on this machine has
    r = subprocess.run([sys.executable, "-m", "crossrec_jobs.train", "--lake-root", str(lake), "--workers", str(workers),
                        "--cpus-per-worker", "1", "--no-gpu"], capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"{workers} worker(s) x 1 CPU need {workers} CPU(s)" in r.stderr and "use fewer --workers" in r.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_worker_killed_mid_epoch_resumes_from_last_checkpoint_and_early_stopping_survives_it(
        ray_local, planted, tmp_path):
    """One run checks both (each Ray Train run costs ~30 s here): rank 1 is killed in epoch 1, the workers resume
    after epoch 0's checkpoint, and with lr=0 epoch 1 cannot beat epoch 0, so patience=1 stops the run there. It
    stops only if the resumed workers got epoch 0's best metric from the checkpoint; with the state lost, epoch 1
    would count as an improvement and epoch 2 would run."""
    lake, _ = planted
    marker = tmp_path / "killed-once"
    cfg = TrainConfig(lake_root=str(lake), epochs=6, patience=1, max_failures=1, model_root=str(tmp_path / "models"),
                      storage_path=str(tmp_path / "ray"), fail_once_at=FailOnce(epoch=1, step=1, rank=1, marker=str(marker)),
                      **{**TINY, "lr": 0.0})
    folder = train(cfg)
    assert marker.exists(), "the hook killed rank 1 in the first attempt"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_at_epochs"] == [1], "the restarted workers resumed after epoch 0's checkpoint"
    assert [h["epoch"] for h in metrics["history"]] == [0, 1], "epoch 0 was not rerun; epoch 1 ran once"
    assert metrics["epochs_run"] == 2 and metrics["early_stopped"], "lr=0: epoch 1 cannot beat epoch 0"
    assert metrics["best_epoch"] == 0
    assert metrics["history"][0]["valid_ndcg@10"] == pytest.approx(metrics["history"][1]["valid_ndcg@10"])
    assert metrics["refit"]["epochs"] == 1, "the refit runs the selected epoch 0 only"
    assert (folder / "model.safetensors").is_file() and folder.parent == tmp_path / "models"

    # the same run again (same config, data versions and day): it resumes the stopped run, trains nothing more
    again = train(cfg)
    assert again == folder
    rerun = json.loads((again / "metrics.json").read_text())
    assert rerun["history"] == metrics["history"] and rerun["model_version"] == metrics["model_version"]
    assert rerun["refit"]["train_loss"] == metrics["refit"]["train_loss"], "the finished refit resumed, not rerun"


@pytest.mark.ray
@pytest.mark.slow
def test_min_epochs_hold_early_stopping_back(ray_local, planted, tmp_path):
    """lr=0: no epoch can beat epoch 0, so patience=1 alone would stop after epoch 1; min_epochs=3 runs three epochs
    before stopping (no refit: the run's own epochs are what is checked)."""
    lake, _ = planted
    cfg = TrainConfig(lake_root=str(lake), epochs=6, patience=1, min_epochs=3, model_root=str(tmp_path / "models"),
                      storage_path=str(tmp_path / "ray"), terms=(), id_shrinkage=0.0, refit=False, **{**TINY, "lr": 0.0})
    metrics = json.loads((train(cfg) / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    assert [h["stop"] for h in metrics["history"]] == [False, False, True]
    assert metrics["early_stopped"] and metrics["history"][-1]["best_epoch"] == 0, "no epoch improved on epoch 0"


def test_length_bucketed_batches_cover_each_window_once_with_little_padding():
    from crossrec.train.windows import length_bucketed

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, size=300)
    ids = np.arange(300)
    pool = lambda sl: pa.table({"item_idx": [list(range(n)) for n in lengths[sl]], "row": ids[sl]})  # noqa: E731
    pools = [pool(slice(0, 128)), pool(slice(128, 256)), pool(slice(256, 300))]
    batches = list(length_bucketed(iter(pools), 16, np.random.default_rng(1)))
    assert len(batches) == 8 + 8 + 3, "ceil(rows / batch_size) batches per pool"
    seen = sorted(r for b in batches for r in b["row"].to_pylist())
    assert seen == list(range(300)), "every window exactly once"
    padded = sum(len(b) * max(len(w) for w in b["item_idx"].to_pylist()) for b in batches)
    assert padded < 1.3 * lengths.sum(), "sorted pools: batches hold windows of similar length"


def test_epoch_pools_give_the_ranks_equal_disjoint_locally_shuffled_ranges():
    from crossrec.train.worker import epoch_pools

    table = pa.table({"row": np.arange(103)})
    shares = {}
    for rank in range(3):
        pools = list(epoch_pools(table, rank, 3, 10, seed=7))
        assert [p.num_rows for p in pools] == [10, 10, 10, 4], "34 rows each (103 // 3), in pools of 10"
        start = 34 * rank
        for p in pools:  # each pool: the next consecutive rows of the rank's range, in a shuffled order
            assert sorted(p["row"].to_pylist()) == list(range(start, start + p.num_rows))
            start += p.num_rows
        shares[rank] = [r for p in pools for r in p["row"].to_pylist()]
    rows = [r for share in shares.values() for r in share]
    assert len(set(rows)) == len(rows) == 102, "disjoint: one row sits the epoch out"
    assert shares[0] != sorted(shares[0]), "shuffled within pools"
    again = [r for p in epoch_pools(table, 0, 3, 10, seed=7) for r in p["row"].to_pylist()]
    assert again == shares[0], "the same seed gives the same order again"
    assert [r for p in epoch_pools(table, 0, 3, 10, seed=8) for r in p["row"].to_pylist()] != shares[0]
    assert sorted(r for p in epoch_pools(table, 0, 1, 50, seed=1) for r in p["row"].to_pylist()) == list(range(103))


def test_restrict_to_domains_keeps_one_domains_events_and_targets():
    import pandas as pd

    from crossrec.data.rawformat import RawFormatError
    from crossrec.train.data import restrict_to_domains

    index = pd.DataFrame({"item_idx": [1, 2, 3, 4], "domain": ["books", "books", "movies", "movies"]})
    seq = pd.DataFrame({
        "user_id": ["a", "a", "a"], "split": ["train", "valid", "valid"],
        "item_idx": [np.array([1, 3, 2, 4]), np.array([1, 3]), np.array([3])],
        "domain_idx": [np.array([0, 1, 0, 1]), np.array([0, 1]), np.array([1])],
        "event_ts": [np.array([1, 2, 3, 4]), np.array([1, 2]), np.array([2])],
        "target_item_idx": [None, 2.0, 4.0],
    })
    out = restrict_to_domains(seq, index, ("books",))
    assert out.split.tolist() == ["train", "valid"], "the movies valid target is not the books model's"
    assert out.item_idx.iloc[0].tolist() == [1, 2] and out.event_ts.iloc[0].tolist() == [1, 3]
    assert out.item_idx.iloc[1].tolist() == [1] and out.domain_idx.iloc[1].tolist() == [0]
    with pytest.raises(RawFormatError, match="music"):
        restrict_to_domains(seq, index, ("music",))


def test_categories_become_attribute_ids_per_domain(planted):
    from crossrec.train.data import load_training_data, resolve_versions

    lake, facts = planted
    cfg = TrainConfig(lake_root=str(lake))
    data = load_training_data(cfg, resolve_versions(str(lake), None))
    attr, dom = data.catalog["item_attr"], data.catalog["domain_idx"]
    topic = facts["topic_of"][data.catalog["item_idx"]]
    assert attr.min() >= 1 and len(np.unique(attr)) == 2 * 2, "one id per (domain, category)"
    for a in np.unique(attr):
        assert len(set(zip(dom[attr == a], topic[attr == a]))) == 1, "an id never spans two domains or categories"
    off = load_training_data(TrainConfig(lake_root=str(lake), use_categories=False), resolve_versions(str(lake), None))
    assert (off.catalog["item_attr"] == 0).all()


def test_items_in_no_training_window_are_listed_and_their_ids_zeroed_in_the_artifact(planted, tmp_path):
    import pandas as pd

    from crossrec.model.artifact import load_model, save_model
    from crossrec.model.config import ModelConfig
    from crossrec.model.encoder import ItemFeatures
    from crossrec.model.transformer import CrossDomainTransformer
    from crossrec.train.artifact import Tuning, write_artifact
    from crossrec.train.data import load_training_data, resolve_versions

    lake, facts = planted
    versions = resolve_versions(str(lake), None)
    full = load_training_data(TrainConfig(lake_root=str(lake)), versions)
    assert full.untrained_items.size == 0, "200 users read every item of the planted lake"
    books = load_training_data(TrainConfig(lake_root=str(lake), input_domains=("books",)), versions)
    movies = books.catalog["item_idx"][books.catalog["domain_idx"] == DOMAINS.index("movies")]
    assert books.untrained_items.tolist() == sorted(movies.tolist()), "books only: every movie is untrained"

    feats = ItemFeatures.from_item_index(
        full.catalog["item_idx"], full.catalog["domain_idx"], full.catalog["domain_item_idx"],
        text_emb=full.catalog["text_emb"])
    torch.manual_seed(0)
    model = CrossDomainTransformer(
        ModelConfig(n_items=facts["n_items"], n_domains=len(DOMAINS), d_model=16, n_layers=1), feats)
    ckpt = save_model(model, tmp_path / "ckpt")
    folder = write_artifact(tmp_path / "models", "20250101-abcdef01", ckpt, books, {"best_epoch": 0})
    out = load_model(folder)
    w, w0 = out.item_encoder.id_emb.weight, model.item_encoder.id_emb.weight
    assert (w[movies] == 0).all() and torch.equal(w[1:][~np.isin(np.arange(1, facts["n_items"] + 1), movies)],
                                                  w0[1:][~np.isin(np.arange(1, facts["n_items"] + 1), movies)])
    assert json.loads((folder / "metrics.json").read_text())["untrained_items"] == len(movies)
    assert pd.read_parquet(folder / "item_index.parquet").item_idx.tolist() == list(range(1, facts["n_items"] + 1))
    assert not (folder / "terms.json").exists(), "no fit: the model alone"

    def tune(m):  # what the driver passes: the terms fitted on the loaded model, the reports, the id shrinkage
        from crossrec.rerank.base import Catalog, TermSet
        from crossrec.rerank.text_similarity import TextSimilarityTerm

        term = TextSimilarityTerm()
        term.fit(None, Catalog.from_model(m))
        return Tuning(TermSet([term], {"text_similarity": {0: {"weight": 1.0, "decay": 0.8}}}, DOMAINS),
                      {"terms": {"fitted_on": "test"}, "id_shrinkage": {"k": 2.0}}, 2.0, refit_counts)

    # a refit model (its ids as learnt from more events) takes the k chosen with the selected epoch's over its own
    # training events; the selected model (the checkpoint) is not changed
    refit = CrossDomainTransformer(ModelConfig(n_items=facts["n_items"], n_domains=len(DOMAINS), d_model=16, n_layers=1), feats)
    refit_ckpt = save_model(refit, tmp_path / "refit")
    refit_counts = np.arange(facts["n_items"] + 1) % 4
    folder = write_artifact(tmp_path / "models", "20250101-abcdef01", refit_ckpt, books, {"best_epoch": 0}, tune,
                            select_dir=ckpt)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["terms"] == {"fitted_on": "test"} and metrics["id_shrinkage"] == {"k": 2.0}
    assert json.loads((folder / "terms.json").read_text())["params"] == {"text_similarity": {"books": {"weight": 1.0, "decay": 0.8}}}
    factors = torch.tensor(refit_counts / (refit_counts + 2.0), dtype=torch.float32)
    factors[torch.from_numpy(books.refit_untrained)] = 0.0  # zeroed first: in no refit window
    torch.testing.assert_close(load_model(folder).item_encoder.id_emb.weight, refit.item_encoder.id_emb.weight * factors[:, None])
    torch.testing.assert_close(load_model(ckpt).item_encoder.id_emb.weight, w0)
    umask = os.umask(0)
    os.umask(umask)
    assert all(f.stat().st_mode & 0o666 == 0o666 & ~umask for f in folder.rglob("*") if f.is_file()), \
        "every file of the artifact, the terms' too, readable as the umask allows"


def test_sample_users_keeps_whole_users_and_is_seeded():
    import pandas as pd

    seq = pd.DataFrame({"user_id": [f"u{i // 2}" for i in range(20)], "split": ["train", "valid"] * 10})
    a, b = sample_users(seq, 4, seed=1), sample_users(seq, 4, seed=1)
    assert a.user_id.nunique() == 4 and a.equals(b)
    assert (a.groupby("user_id").size() == 2).all(), "a sampled user keeps all its rows"
    assert sample_users(seq, 50, seed=1) is seq


def test_user_slices_cover_every_id_once():
    from crossrec.train.data import user_slices

    assert user_slices(10, rows_per_slice=100) == [(None, None)]
    slices = user_slices(1000, rows_per_slice=100)
    assert len(slices) == 10 and slices[0][0] is None and slices[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:])), "consecutive ranges, no gap, no overlap"
    ids = ["", "0", "00ff", "7f", "80", "ab12", "ff", "ffff", "zz", "U1"]
    for u in ids:
        assert sum((lo is None or u >= lo) and (hi is None or u < hi) for lo, hi in slices) == 1, u
    assert len(user_slices(10**9, rows_per_slice=1)) == 256


@pytest.mark.parametrize("settings", [{}, {"max_users": 120, "refit": True}])
def test_training_data_read_in_user_slices_is_the_data_read_at_once(tmp_path_factory, monkeypatch, settings):
    from crossrec.train import data as training_data
    from crossrec.train.data import load_training_data, resolve_versions

    lake = tmp_path_factory.mktemp("hexlake")
    build_planted_lake(lake, hex_ids=True)
    cfg = TrainConfig(lake_root=str(lake), **settings)
    versions = resolve_versions(str(lake), None)
    whole = load_training_data(cfg, versions)
    monkeypatch.setattr(training_data, "ROWS_PER_SLICE", 100)  # 1,400 rows: 14 slices
    sliced = load_training_data(cfg, versions)

    def rows(t: pa.Table, drop=()) -> list:
        return sorted(repr(r) for r in t.drop_columns(list(drop)).to_pylist())

    assert rows(sliced.train) == rows(whole.train) and whole.train.num_rows > 0
    assert rows(sliced.valid, ("row_id",)) == rows(whole.valid, ("row_id",)) and whole.valid.num_rows > 0
    assert sliced.valid.column("row_id").to_pylist() == list(range(whole.valid.num_rows))
    if cfg.refit:
        assert rows(sliced.refit_train) == rows(whole.refit_train)
    assert sliced.untrained_items.tolist() == whole.untrained_items.tolist()


# ------------------------------------------------------------------------------------- fine-tuned text encoder
def _with_item_texts(lake: Path, changed: str | None = None) -> int:
    """silver.items for the planted lake's catalog (a text per item naming its topic), and gold.item_embeddings'
    text_hash made the hash of what the features job would have encoded; ``changed``: that item's text differs
    from what was encoded. Returns silver.items' version."""
    from crossrec.text.encoder import item_texts, text_hash

    index = DeltaTable(str(lake / "gold" / "item_index")).to_pandas().sort_values("item_idx")
    texts = [f"{cat} things, item {iid}" for iid, cat in zip(index.item_id, index.category)]
    attrs = [[("shelf", "top")] if k % 2 else [] for k in range(len(index))]
    schema = pa.schema([("domain", pa.string()), ("item_id", pa.string()), ("title", pa.string()), ("text", pa.string()),
                        ("category", pa.string()), ("attributes", pa.map_(pa.string(), pa.string()))])
    items = pa.Table.from_pydict({"domain": list(index.domain), "item_id": list(index.item_id), "title": texts,
                                  "text": texts, "category": list(index.category), "attributes": attrs}, schema=schema)
    write_deltalake(str(lake / "silver" / "items"), items, mode="overwrite")
    encoded = item_texts(texts, list(index.category), attrs)
    hashes = {(d, i): text_hash(t + (" (old)" if i == changed else "")) for d, i, t in zip(index.domain, index.item_id, encoded)}
    emb = DeltaTable(str(lake / "gold" / "item_embeddings")).to_pandas()
    emb["text_hash"] = [hashes[(d, i)] for d, i in zip(emb.domain, emb.item_id)]
    write_gold(lake, "gold.item_embeddings", emb.to_dict("records"))
    return DeltaTable(str(lake / "silver" / "items")).version()


def test_fine_tuning_refuses_item_texts_that_differ_from_what_the_features_job_encoded(tmp_path):
    from crossrec.io.config import ConfigError
    from crossrec.train.data import add_item_tokens, load_training_data, resolve_versions

    lake = tmp_path / "lake"
    build_planted_lake(lake, users=20)
    _with_item_texts(lake, changed="m007")
    cfg = TrainConfig(lake_root=str(lake), text_encoder="finetune", text_max_tokens=12)
    data = load_training_data(cfg, resolve_versions(str(lake), None))
    with pytest.raises(ConfigError, match=r"1 item text\(s\) in silver.items differ .* \(movies, m007\)"):
        add_item_tokens(cfg, data)
    version = _with_item_texts(lake)
    data = load_training_data(cfg, resolve_versions(str(lake), None))
    assert add_item_tokens(cfg, data) == {"silver.items": version}
    tokens, mask = data.catalog["text_tokens"], data.catalog["text_mask"]
    assert tokens.shape == mask.shape == (len(data.item_index), 12) and (mask.sum(1) >= 3).all()
    assert TrainConfig(lake_root="/x").resolved_text_encoder(use_gpu=True) == "finetune"
    assert TrainConfig(lake_root="/x").resolved_text_encoder(use_gpu=False) == "frozen"
    assert TrainConfig(lake_root="/x", use_text=False).resolved_text_encoder(use_gpu=True) == "frozen"


@pytest.mark.ray
@pytest.mark.slow
def test_train_job_fine_tunes_the_text_encoder_under_ray_train(ray_local, tmp_path):
    """--text-encoder finetune on 2 DDP workers: the artifact carries the text model, only its top layer moved, and
    it scores through the one inference path."""
    from crossrec.evaluate.protocol import evaluate, load_eval_data, transformer_score_fn
    from crossrec.model.artifact import load_artifact
    from crossrec.model.encoder import _load_text_model
    from crossrec_jobs.train import main

    lake = tmp_path / "lake"
    build_planted_lake(lake, users=60, items_per_topic=8)
    version = _with_item_texts(lake)
    rc = main(["--lake-root", str(lake), "--workers", "2", "--epochs", "1", "--batch-size", "32", "--d-model", "32",
               "--n-layers", "1", "--max-seq-len", "10", "--no-gpu", "--terms", "none", "--text-encoder", "finetune",
               "--text-max-tokens", "12", "--text-lr-scale", "1", "--no-refit", "--id-shrinkage", "0"])
    assert rc == 0
    folder, metrics = _artifact(lake)
    assert metrics["text_encoder"] == "finetune" and metrics["model"]["text_encoder"] == "finetune"
    assert metrics["text_tokens_from"] == {"silver.items": version}
    art = load_artifact(folder)
    text_model = art.model.item_encoder.text_model
    pretrained = _load_text_model(None, pretrained=True)
    layers = list(zip(text_model.encoder.layer, pretrained.encoder.layer))
    moved = [not all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters())) for ours, ref in layers]
    assert moved == [False] * (len(layers) - 1) + [True], "only the top layer was trained"
    data = load_eval_data(str(lake), versions=metrics["data_versions"], split="valid")
    recs = [r for r in evaluate("finetuned", transformer_score_fn(art.model, data), data)
            if r["metric"] == "ndcg" and r["k"] == 10 and r["segment"] == "all"]
    for r in recs:  # the loop's validation and the evaluation read the artifact (here the selected model, its ids as
        # learnt: a shrinkage chosen on validation would make it another model) the same way
        assert r["value"] == pytest.approx(metrics["valid"][f"valid_ndcg@10/{r['domain']}"], abs=1e-9), r


def test_extend_with_targets_merges_each_users_valid_targets_by_time():
    import pandas as pd

    from crossrec.train.windows import extend_with_targets

    train = pd.DataFrame({"user_id": ["a", "b"], "item_idx": [[1, 4, 2], [3]], "event_ts": [[10, 20, 30], [5]]})
    valid = pd.DataFrame({"user_id": ["a", "a", "c"], "target_item_idx": [5, 6, 2], "target_ts": [25, 30, 7]})
    item_domain = np.array([0, 0, 0, 1, 1, 1, 1])
    items, domains, times = extend_with_targets(train, valid, item_domain)
    got = {tuple(t.tolist()): (i.tolist(), d.tolist()) for i, d, t in zip(items, domains, times)}
    # a: target 5 between its events, target 6 after the event at the same time; b: no targets; c: targets only
    assert got == {(10, 20, 25, 30, 30): ([1, 4, 5, 2, 6], [0, 1, 1, 0, 1]), (5,): ([3], [1]), (7,): ([2], [0])}


def test_the_train_flags_take_their_defaults_from_the_one_declaration():
    """TrainConfig's model fields default to ModelConfig's, and every flag of `crossrec train` that sets a TrainConfig
    field defaults to TrainConfig's value (a flag without a default is a config key: CrossrecConfig's applies)."""
    import argparse
    import dataclasses

    from crossrec.io.config import CrossrecConfig
    from crossrec.model.config import ModelConfig
    from crossrec_jobs.train import add_arguments

    train_defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    model_defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    shared = set(train_defaults) & set(model_defaults) - {"loss", "text_encoder"}  # TrainConfig adds "auto" to these
    assert shared >= {"d_model", "n_layers", "n_heads", "dropout", "max_seq_len", "n_negatives", "finetune_layers"}
    assert {k: train_defaults[k] for k in shared} == {k: model_defaults[k] for k in shared}
    assert (train_defaults["seed"], train_defaults["text_encoder"]) == (CrossrecConfig.seed, CrossrecConfig.text_encoder)
    p = argparse.ArgumentParser()
    add_arguments(p)
    flags = {a.dest: a.default for a in p._actions if a.dest in train_defaults}
    assert len(flags) >= 25, sorted(flags)
    for dest, default in flags.items():
        if default is not None:
            assert default == train_defaults[dest], (dest, default, train_defaults[dest])
    assert TrainConfig(lake_root="/x").n_negatives == model_defaults["n_negatives"]


def test_the_fault_hook_passes_every_batch_through_unless_it_is_armed_for_this_rank_and_step(tmp_path):
    from crossrec.train.faults import fail_once

    hook = {"epoch": 1, "step": 2, "rank": 1, "marker": str(tmp_path / "m")}
    assert list(fail_once(range(5), None, rank=0, epoch=0)) == [0, 1, 2, 3, 4]
    assert list(fail_once(range(5), hook, rank=0, epoch=1)) == [0, 1, 2, 3, 4], "another rank"
    assert list(fail_once(range(5), hook, rank=1, epoch=0)) == [0, 1, 2, 3, 4], "another epoch"
    (tmp_path / "m").write_text("done")
    assert list(fail_once(range(5), hook, rank=1, epoch=1)) == [0, 1, 2, 3, 4], "fired once already"


def test_entity_vocabulary_keeps_shared_entities_most_frequent_first():
    from crossrec.train.data import entity_vocabulary

    rows = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    ents = np.array(["brand:a", "person:x", "brand:z", "brand:a", "person:x", "brand:a", "person:x", "solo:q"])
    ids, vocab = entity_vocabulary(rows, ents, 5, min_items=2, max_entities=10, max_per_item=8)
    assert vocab == ["brand:a", "person:x"]  # 3 items each, ties by name; brand:z and solo:q are on one item only
    assert ids.tolist() == [[1, 2], [1, 2], [1, 0], [2, 0], [0, 0]]
    ids, vocab = entity_vocabulary(rows, ents, 5, min_items=1, max_entities=3, max_per_item=1)
    assert vocab == ["brand:a", "person:x", "brand:z"] and ids[:, 0].tolist() == [1, 1, 1, 2, 0] and ids.shape == (5, 1)
    ids, vocab = entity_vocabulary(np.array([], dtype=np.int64), np.array([], dtype=str), 3, min_items=2,
                                   max_entities=10, max_per_item=8)
    assert vocab == [] and ids.tolist() == [[0], [0], [0]]


def test_train_job_gives_items_the_entities_of_silver_item_entities(ray_local, tmp_path):
    """Entities shared by two or more items become the model's entity ids (the artifact names them); an entity on
    one item and the entities of --no-entities do not."""
    from crossrec.model.artifact import ENTITIES_FILE, load_artifact
    from crossrec_jobs.train import main

    lake = tmp_path / "lake"
    facts = build_planted_lake(lake, users=60, items_per_topic=8)
    index = DeltaTable(str(lake / "gold" / "item_index")).to_pandas().sort_values("item_idx").reset_index(drop=True)
    topic = facts["topic_of"][index.item_idx.values]
    rows = [{"domain": d, "item_id": i, "entity": f"person:creator {t}", "entity_type": "person", "value": f"creator {t}",
             "attribute": "author", "run_id": "r"} for d, i, t in zip(index.domain, index.item_id, topic)]
    rows.append({"domain": index.domain[0], "item_id": index.item_id[0], "entity": "brand:only one", "entity_type": "brand",
                 "value": "only one", "attribute": "brand", "run_id": "r"})
    version = write_gold(lake, "silver.item_entities", rows)
    args = ["--lake-root", str(lake), "--workers", "1", "--epochs", "1", "--batch-size", "32", "--d-model", "16",
            "--n-layers", "1", "--max-seq-len", "10", "--no-gpu", "--terms", "none", "--no-refit"]
    assert main(args) == 0
    folder, metrics = _artifact(lake)
    assert metrics["entities_from"] == {"silver.item_entities": version} and metrics["n_entities"] == 2
    art = load_artifact(folder)
    assert art.entities == ["person:creator 0", "person:creator 1"]  # 2 topics; "brand:only one" is on one item
    ids = art.model.item_encoder.item_entities[torch.as_tensor(index.item_idx.values)][:, 0].numpy()
    assert (ids == topic + 1).all(), "each item carries its topic's entity, in both domains"
    assert main(args + ["--no-entities", "--seed", "1"]) == 0
    folder, metrics = _artifact(lake)
    assert metrics["n_entities"] == 0 and not (folder / ENTITIES_FILE).exists()
    assert load_artifact(folder).model.item_encoder.entity_emb is None
