"""Shared fixtures: one Spark session for the whole test run, a local Ray instance per module, a pseudonym key,
tiny raw data sets."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import SCORE_DAY, SCORE_K, TEST_KEY, job_args, write_artifact, write_raw


def pytest_configure(config):
    for marker, text in {
        "spark": "starts or uses the shared Spark session",
        "ray": "starts a local Ray cluster",
        "slow": "takes more than ~30 s",
        "gpu": "needs a CUDA device (skipped without one)",
        "realdata": "needs ../shared/data (skipped when absent)",
    }.items():
        config.addinivalue_line("markers", f"{marker}: {text}")


# a test that takes an engine's fixture is marked as using that engine, so `-m "not spark and not ray"` selects
# only tests that start neither (a marker left off by hand once let a Ray test run with the light ones)
ENGINE_FIXTURES = {"spark": "spark", "scored_lake": "spark", "ray_local": "ray"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Engine markers from fixtures; under ``pytest -n N --dist loadgroup`` (``make test``) every Spark or Ray test
    runs in one worker, one after another (two engines at once starve a small machine), and the other tests run in
    the other workers beside them."""
    for item in items:
        for fixture in set(getattr(item, "fixturenames", ())) & ENGINE_FIXTURES.keys():
            item.add_marker(ENGINE_FIXTURES[fixture])
        if item.get_closest_marker("spark") or item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("engines"))


@pytest.hookimpl(trylast=True)  # after pytest-xdist marked the groups
def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` each engine test's node id must carry its group, or pytest-xdist spreads the Spark and
    Ray tests over every worker without a word (pytest 9.2 broke that; pyproject.toml pins below it)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    loose = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid.rpartition("]")[2]]
    if loose:
        raise pytest.UsageError(f"pytest-xdist did not group {len(loose)} engine test(s) (e.g. {loose[0]}): this pytest "
                                f"and pytest-xdist do not honour xdist_group; run with TEST_WORKERS=0")


@pytest.fixture(scope="session")
def spark():
    """One local Spark session with Delta for all tests (2 cores: local[2], few partitions, no UI)."""
    from crossrec.io.spark import build_spark

    s = build_spark(
        "crossrec-tests",
        "local[2]",
        {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", "spark.driver.memory": "3g"},
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ray_local():
    """One small local Ray instance for the module (2 CPUs, no dashboard); always shut down."""
    import ray

    from crossrec.train.ray_setup import local_init_kwargs

    if not ray.is_initialized():
        ray.init(**local_init_kwargs(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture()
def key_file(tmp_path: Path) -> Path:
    p = tmp_path / "pseudonym.key"
    p.write_text(TEST_KEY)
    return p


@pytest.fixture()
def tiny_raw(tmp_path: Path) -> Path:
    return write_raw(tmp_path / "raw")


@pytest.fixture(scope="session")
def scored_lake(spark, tmp_path_factory) -> dict:
    """generate -> prepare (ingest -> clean -> features) -> (untrained artifact) -> evaluate -> score, once per
    test run."""
    from crossrec.data.synthetic import SyntheticSpec, generate
    from crossrec_jobs import evaluate, prepare, score

    root = tmp_path_factory.mktemp("scored")
    raw, lake, key = root / "raw", root / "lake", root / "key"
    key.write_text(TEST_KEY)
    generate(raw, SyntheticSpec(users=120, domains=2, items_per_domain=40, mean_events_per_user=12, seed=5,
                                entity_signal="shared"))
    args = job_args(raw, lake, key, "--run-date", SCORE_DAY)
    # without the data tables' checks (~20 s; tests/jobs and the Airflow test run them): this lake is for scoring
    assert prepare.main([*args, "--no-validate"]) == 0
    write_artifact(lake)
    lake_args = args[2:]  # evaluate and score read no raw files: no --raw-dir
    assert args[0] == "--raw-dir"
    assert evaluate.main([*lake_args, "--baselines", "pop"]) == 0
    assert score.main([*lake_args, "--k", str(SCORE_K)]) == 0
    return {"raw": raw, "lake": lake, "key": key, "args": lake_args}


SIZES = (12, 9)  # books 1..12, movies 13..21
SEQ_COLUMNS = ["user_id", "split", "target_domain", "item_idx", "domain_idx", "event_ts", "target_item_idx", "target_ts",
               "cold_start", "history_len"]


@pytest.fixture()
def two_domains(tmp_path):
    """Books (items 1..12) and movies (13..21). ``valid(rows)`` writes gold tables with ``rows`` (SEQ_COLUMNS) and
    returns their valid split; ``model(seed, entities)`` an untrained tiny model over the 21 items (random text
    vectors)."""
    import numpy as np
    import pandas as pd
    import torch
    from deltalake import write_deltalake

    from crossrec.evaluate.protocol import load_eval_data
    from crossrec.model.config import ModelConfig
    from crossrec.model.encoder import ItemFeatures
    from crossrec.model.transformer import CrossDomainTransformer

    dom = np.repeat([0, 1], SIZES)
    index = pd.DataFrame({"domain": np.where(dom == 0, "books", "movies"), "item_id": [f"i{i}" for i in range(1, 22)],
                          "item_idx": np.arange(1, 22), "domain_idx": dom,
                          "domain_item_idx": np.concatenate([np.arange(n) for n in SIZES]),
                          "category": [None] * 21, "train_count": np.ones(21, dtype=np.int64)})

    def valid(rows):
        lake = tmp_path / "lake"
        write_deltalake(str(lake / "gold" / "item_index"), index)
        write_deltalake(str(lake / "gold" / "user_sequences"), pd.DataFrame(rows, columns=SEQ_COLUMNS))
        return load_eval_data(str(lake), split="valid")

    def model(seed: int, entities: list[int] | None = None, item_bias: bool = False) -> "CrossDomainTransformer":
        """``entities``: one entity id (>= 1) per item 1..21, or None (a model without entities)."""
        ids = torch.arange(22)
        item_dom = torch.tensor([0, *dom])
        feats = ItemFeatures(text_emb=torch.randn(22, 8, generator=torch.Generator().manual_seed(seed)),
                             item_domain=item_dom, item_attr=torch.zeros(22, dtype=torch.long),
                             domain_items=[ids[(item_dom == k) & (ids > 0)] for k in (0, 1)],
                             item_entities=None if entities is None else torch.tensor([0, *entities])[:, None])
        torch.manual_seed(seed)
        return CrossDomainTransformer(ModelConfig(n_items=21, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2,
                                                  dropout=0.0, max_seq_len=8,
                                                  n_entities=0 if entities is None else max(entities),
                                                  item_bias=item_bias), feats)

    return SimpleNamespace(dom=dom, index=index, valid=valid, model=model)


os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
# The jobs' local default is 64 shuffle partitions, sized for a million users. On the tests' tables of a few hundred
# rows every partition is a file per map task: 2 take ingest -> clean -> features on 120 users from ~90 to ~55 s
# warm. Jobs run in this process and job processes started by tests read it (CROSSREC_SPARK_CONF).
os.environ.setdefault("CROSSREC_SPARK_CONF", "spark.sql.shuffle.partitions=2")
