"""Helpers the tests import by name (``from support import ...``): the test key, the shared data folder, tiny raw data
sets, a stage's flags and an untrained artifact. Fixtures live in conftest.py files; a module named ``conftest`` is not
importable by name once a sub-folder has its own (pytest keeps one ``conftest`` in sys.modules)."""
from __future__ import annotations

import json
from pathlib import Path

TEST_KEY = "test-only-pseudonym-key-0123456789"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_raw(root: Path, *, books_rows: list[str] | None = None, movies_rows: list[dict] | None = None,
              books_items: list[str] | None = None, movies_items: list[dict] | None = None,
              identity_rows: list[str] | None = None, books_header: str = "reader,isbn,read_at,action,stars") -> Path:
    """A tiny two-domain raw data set: books as CSV (ISO times), movies as JSON lines (epoch seconds),
    plus an identity map joining the movie domain's user ids to the books ids."""
    books_rows = books_rows if books_rows is not None else [
        "u1,b1,2021-01-01T10:00:00Z,view,1",
        "u1,b2,2021-01-02T10:00:00Z,purchase,3",
        "u2,b1,2021-01-03T10:00:00Z,view,",
    ]
    movies_rows = movies_rows if movies_rows is not None else [
        {"uid": "m-1", "movie_id": "mv1", "ts": 1609495200, "event": "view"},
        {"uid": "m-2", "movie_id": "mv2", "ts": 1609581600, "event": "view"},
        {"uid": "m-3", "movie_id": "mv1", "ts": 1609668000, "event": "rating"},
    ]
    books_items = books_items if books_items is not None else [
        "b1,The Galaxy Chronicle,scifi,A story of space.,Ann Author",
        "b2,Sourdough Secrets,cooking,Bread for everyone.,Bob Baker",
    ]
    movies_items = movies_items if movies_items is not None else [
        {"movie_id": "mv1", "name": "Orbit", "genre": "scifi", "plot": "Astronauts far from home."},
        {"movie_id": "mv2", "name": "Crust", "genre": "food", "plot": "A baker's year."},
    ]
    identity_rows = identity_rows if identity_rows is not None else ["movies,m-1,u1", "movies,m-2,u2"]
    (root / "books").mkdir(parents=True, exist_ok=True)
    (root / "movies").mkdir(parents=True, exist_ok=True)
    (root / "books" / "interactions.csv").write_text("\n".join([books_header, *books_rows]) + "\n", encoding="utf-8")
    (root / "books" / "items.csv").write_text("\n".join(["isbn,title,genre,blurb,author", *books_items]) + "\n", encoding="utf-8")
    (root / "movies" / "interactions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in movies_rows), encoding="utf-8")
    (root / "movies" / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in movies_items), encoding="utf-8")
    (root / "identity_map.csv").write_text("\n".join(["domain,local_user,person", *identity_rows]) + "\n", encoding="utf-8")
    spec = {
        "name": "tiny",
        "domains": {
            "books": {
                "interactions": {"path": "books/interactions.csv", "format": "csv", "timestamp": "iso8601",
                                 "columns": {"user_id": "reader", "item_id": "isbn", "event_ts": "read_at", "event_type": "action", "weight": "stars"}},
                "items": {"path": "books/items.csv", "format": "csv", "columns": {"item_id": "isbn", "title": "title", "category": "genre"},
                          "text_columns": ["title", "blurb"], "attribute_columns": ["author"]},
            },
            "movies": {
                "interactions": {"path": "movies/interactions.jsonl", "format": "jsonl", "timestamp": "epoch_s",
                                 "columns": {"user_id": "uid", "item_id": "movie_id", "event_ts": "ts", "event_type": "event"}},
                "items": {"path": "movies/items.jsonl", "format": "jsonl", "columns": {"item_id": "movie_id", "title": "name", "category": "genre"},
                          "text_columns": ["name", "plot"]},
            },
        },
        "identity_map": {"path": "identity_map.csv", "format": "csv",
                         "columns": {"domain": "domain", "user_id": "local_user", "global_user_id": "person"}},
    }
    (root / "dataset.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return root


def job_args(raw: Path, lake: Path, key_file: Path, *extra: str) -> list[str]:
    """Flags for a stage main(): embedded Spark reuses the session of the ``spark`` fixture."""
    return ["--raw-dir", str(raw), "--lake-root", str(lake), "--pseudonym-key-file", str(key_file),
            "--run-date", "2024-06-30", "--spark-master", "local[2]", *extra]


SCORE_K = 5
SCORE_DAY = "2025-01-01"


def write_artifact(lake: Path, version: str = "20250101-test0001", seed: int = 0) -> Path:
    """An untrained model over the lake's gold catalog, in the layout `crossrec train` writes, registered in the lake's
    model registry as the champion."""
    import numpy as np
    import torch

    from crossrec.io.readers import read_table
    from crossrec.model.artifact import save_artifact
    from crossrec.model.config import ModelConfig
    from crossrec.model.encoder import ItemFeatures
    from crossrec.model.transformer import CrossDomainTransformer

    index = read_table(str(lake), "gold.item_index").sort_values("item_idx")
    emb = read_table(str(lake), "gold.item_embeddings", columns=["domain", "item_id", "embedding"])
    emb = index[["domain", "item_id"]].merge(emb, on=["domain", "item_id"], how="left")
    ids, vocab = None, []  # the lake's attribute entities, as training reads them
    if (lake / "silver" / "item_entities").is_dir():
        from crossrec.train.data import entity_vocabulary

        ents = read_table(str(lake), "silver.item_entities", columns=["domain", "item_id", "entity"])
        rows = index[["domain", "item_id"]].reset_index(drop=True).reset_index().merge(ents, on=["domain", "item_id"])
        ids, vocab = entity_vocabulary(rows["index"].values, rows.entity.values.astype(str), len(index), min_items=2,
                                       max_entities=1000, max_per_item=4)
    feats = ItemFeatures.from_item_index(index.item_idx.values, index.domain_idx.values, index.domain_item_idx.values,
                                         text_emb=np.stack(emb.embedding.values), item_entities=ids if vocab else None)
    torch.manual_seed(seed)
    cfg = ModelConfig(n_items=len(index), n_domains=index.domain_idx.nunique(), d_model=16, n_layers=1, n_heads=2,
                      max_seq_len=20, n_entities=len(vocab))
    folder = save_artifact(lake / "models" / version, CrossDomainTransformer(cfg, feats), None,
                           index[["item_idx", "domain", "item_id", "domain_idx", "domain_item_idx"]],
                           {"model_version": version, "input_domains": None}, vocab)
    from crossrec.io.registry import Registry

    registry = Registry(str(lake))
    registry.set_champion(registry.register(folder, {"seed": seed}, [], {}).number)
    return folder


def moto_s3(bucket: str):
    """moto's S3 server on a free loopback port with ``bucket`` created: ``(server, AWS variables for it)``; the
    caller sets the variables and stops the server."""
    import boto3
    from moto.server import ThreadedMotoServer

    from crossrec.cluster import _free_port

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=bucket)
    return server, env


def best_that_counts(record: dict, min_gain_se: float = 1.0) -> tuple:
    """The setting the fit must choose: the best NDCG@10 (ties: the smaller weight, then the weaker decay) of those that
    beat the term off by ``min_gain_se`` paired standard errors, or off when none does."""
    keys = list(record["params"])
    off = next(t["value"] for t in record["valid_ndcg@10"] if t["weight"] == 0.0)
    ok = [t for t in record["valid_ndcg@10"]
          if t["weight"] == 0.0 or t["value"] - off > 0 and t["value"] - off >= min_gain_se * t["gain_se"]]
    best = max(ok, key=lambda t: (t["value"], -t["weight"], *(t[k] for k in keys[1:])))
    return tuple(best[k] for k in keys)
