"""crossrec bench ceiling: the generator replayed, the protocol's rows, the refusals."""
import json
import math

import numpy as np
import pytest

from crossrec.bench.ceiling import RANKERS, CeilingError, CeilingSpec, _ndcg, run_ceiling
from crossrec.data.synthetic import SyntheticSpec, generate


def test_ndcg_ranks_the_target_among_the_items_not_excluded():
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    got = _ndcg(scores, np.array([2, 2]), seen_rows=np.array([0]), seen_cols=np.array([0]))
    assert got[0] == pytest.approx(1 / math.log2(3))  # item 0 excluded: the target is second
    assert got[1] == pytest.approx(1 / math.log2(4))  # nothing excluded in row 1: third
    assert _ndcg(np.arange(20.0)[None, :], np.array([5]), np.zeros(0, int), np.zeros(0, int))[0] == 0.0  # rank 15: past K


def test_the_ceiling_replays_the_generated_users_and_ranks_by_their_taste(tmp_path):
    raw = tmp_path / "raw"
    generate(raw, SyntheticSpec(users=400, domains=2, items_per_domain=60, seed=5), chunk_users=150)  # three chunks
    quality = tmp_path / "quality.json"
    quality.write_text(json.dumps({"records": [
        {"model": m, "domain": d, "segment": "all", "metric": "ndcg", "k": 10, "value": v}
        for d in ("books", "movies") for m, v in (("pop", 0.05), ("itemknn", 0.10), ("crossrec", 0.5))]}))
    result = run_ceiling(CeilingSpec(str(raw), str(tmp_path / "out"), str(quality)))
    manifest = json.loads((raw / "manifest.json").read_text())
    by = {(r["model"], r["domain"], r["segment"]): r for r in result["records"]}
    for domain in ("books", "movies"):
        # one test row per user active in the domain: the protocol's `all` rows
        assert {by[(m, domain, "all")]["n_users"] for m in RANKERS} == {manifest["domains"][domain]["users"]}
        assert 0 < by[("oracle", domain, "cold_start")]["n_users"] < manifest["domains"][domain]["users"]  # multi-domain users
        for segment in ("all", "cold_start"):
            oracle, pop = by[("oracle", domain, segment)], by[("pop", domain, segment)]
            assert oracle["value"] > pop["value"] + 3 * oracle["se"]
    assert {d: tuple(v) for d, v in result["best_baselines"].items()} == {"books/all": ("itemknn", 0.10), "movies/all": ("itemknn", 0.10)}
    assert "| itemknn 0.1000 | 0.1200 |" in (tmp_path / "out" / "ceiling.md").read_text()


def test_with_favourite_creators_the_oracle_knows_them_and_the_topic_oracle_does_not(tmp_path):
    raw = tmp_path / "raw"
    generate(raw, SyntheticSpec(users=400, domains=2, items_per_domain=600, entity_signal="shared", seed=3))
    result = run_ceiling(CeilingSpec(str(raw), str(tmp_path / "out")))
    by = {(r["model"], r["domain"], r["segment"]): r for r in result["records"]}
    for domain in ("books", "movies"):
        oracle, topics = by[("oracle", domain, "all")], by[("topic_oracle", domain, "all")]
        assert oracle["value"] > topics["value"] + 2 * oracle["se"]  # 70% of topical events pick the favourite creator


def test_the_ceiling_refuses_data_it_cannot_replay(tmp_path):
    with pytest.raises(CeilingError, match="manifest.json not found"):
        run_ceiling(CeilingSpec(str(tmp_path), str(tmp_path / "out")))
    raw = tmp_path / "raw"
    generate(raw, SyntheticSpec(users=50, domains=2, items_per_domain=40, new_items=0.1, seed=1))
    with pytest.raises(CeilingError, match="new items"):
        run_ceiling(CeilingSpec(str(raw), str(tmp_path / "out")))
