"""TermSet (how the terms combine with the Transformer's scores, their tables, their files), the grid each term
declares, and the registry: every module of crossrec.rerank is imported, and a sixth term is one new class."""
from __future__ import annotations

import json
import pkgutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import crossrec.rerank  # noqa: E402
import crossrec.rerank.base as base  # noqa: E402
from crossrec.inference import score_covariance  # noqa: E402
from crossrec.rerank.base import ScoreTerm, TermSet, registered  # noqa: E402
from crossrec.rerank.category import CategoryTerm  # noqa: E402
from crossrec.rerank.cold_category import ColdCategoryTerm  # noqa: E402
from crossrec.rerank.cold_popularity import ColdPopularityTerm  # noqa: E402
from crossrec.rerank.cold_text import ColdTextTerm  # noqa: E402
from crossrec.rerank.cooccurrence import CooccurrenceTerm  # noqa: E402
from crossrec.rerank.entity import ColdEntityTerm, SameDomainEntityTerm  # noqa: E402
from crossrec.rerank.next_item import NextItemTerm  # noqa: E402
from crossrec.rerank.text_similarity import TextSimilarityTerm  # noqa: E402

DOMAINS = ["books", "movies"]


def every_term(tiny) -> list[ScoreTerm]:
    """The nine terms on the tiny catalog: random co-occurrence and transition matrices, a linear popularity, random
    category statistics (random events of 5 users)."""
    catalog = tiny.catalog()
    cooc, nxt, pop = CooccurrenceTerm(), NextItemTerm(), ColdPopularityTerm()
    cooc.load_state_dict(tiny.pairs(1)[1], catalog)
    counts = tiny.pairs(2)[1]
    nxt.load_state_dict({**counts, "values": (counts["values"] * 10).round()}, catalog)
    pop.load_state_dict({"popularity": torch.linspace(-1.5, 1.5, 10)}, catalog)
    category, cold_category = CategoryTerm(), ColdCategoryTerm()
    events = SimpleNamespace(item=torch.randint(1, 10, (40,), generator=torch.Generator().manual_seed(3)).numpy(),
                             user=np.arange(40) % 5, n_users=5)
    for term in (category, cold_category):
        term.fit(events, catalog)
    text, cold_text = TextSimilarityTerm(), ColdTextTerm()
    entity, cold_entity = SameDomainEntityTerm(), ColdEntityTerm()
    for term in (text, cold_text, entity, cold_entity):
        term.fit(None, catalog)
    return [cold_text, nxt, entity, pop, text, category, cold_entity, cooc, cold_category]  # any order: kept in fit order


def model_scores(tiny, batch, d):
    with torch.no_grad():
        h = tiny.model.user_vectors(batch, d)
        reps = tiny.model.domain_item_reps(d)
        return h @ reps.T, h, score_covariance(reps)


def test_terms_add_their_weighted_values_times_each_users_score_spread_in_order(tiny):
    terms = every_term(tiny)
    params = {"cooccurrence": {1: {"weight": 2.0, "decay": 0.6}}, "text_similarity": {1: {"weight": 3.0, "decay": 0.5}},
              "next_item": {1: {"weight": 1.5}}, "cold_popularity": {1: {"weight": 0.5}, 0: {"weight": 0.0}},
              "cold_text": {1: {"weight": 2.0, "decay": 0.5}}, "entity": {1: {"weight": 0.5, "decay": 0.8}},
              "cold_entity": {1: {"weight": 1.5, "decay": 1.0}}, "category": {1: {"weight": 0.5, "decay": 0.6, "transfer": 1.0}},
              "cold_category": {1: {"weight": 0.7, "decay": 1.0, "transfer": 4.0}}}
    ts = TermSet(terms, params, DOMAINS)
    assert [t.name for t in ts.terms] == list(registered()), "fit order"
    seqs = [[1, 2, 3, 2], [6, 7, 1], [8, 1], [6], [], [9, 2]]  # domain 1 (items 6..9): row 0 new to it, row 4 empty
    batch = tiny.batch(seqs, T=5)
    raw, h, cov = model_scores(tiny, batch, 1)
    std = raw.std(1, keepdim=True)  # from the covariance, without a pass over the scores
    torch.testing.assert_close(base.score_std(h, cov)[:, None], std, rtol=1e-4, atol=1e-6)
    got = ts.apply(raw, batch["item_idx"], 1, h, cov)
    item_idx, t = batch["item_idx"], {x.name: x for x in terms}
    warm = (t["cooccurrence"].features(item_idx, 1, decay=0.6) * 2.0 + t["text_similarity"].features(item_idx, 1, decay=0.5) * 3.0
            + t["next_item"].features(item_idx, 1) * 1.5 + t["entity"].features(item_idx, 1, decay=0.8) * 0.5
            + t["category"].features(item_idx, 1, decay=0.6, transfer=1.0) * 0.5)
    cold = (t["cold_popularity"].features(item_idx, 1) * 0.5 + t["cold_text"].features(item_idx, 1, decay=0.5) * 2.0
            + t["cold_entity"].features(item_idx, 1) * 1.5 + t["cold_category"].features(item_idx, 1, transfer=4.0) * 0.7)
    warm_rows = [1, 2, 3, 5]
    torch.testing.assert_close(got[warm_rows], raw[warm_rows] + std[warm_rows] * warm[warm_rows], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[0], raw[0] + std[0] * cold[0], rtol=1e-4, atol=1e-5)  # new to domain 1: cold terms only
    torch.testing.assert_close(got[4], raw[4], rtol=0, atol=0)  # no history at all: no term (popularity scores it)
    assert bool((warm[1:4].abs().sum(1) > 0).all()) and bool((cold[0] != 0).any()), "the data exercise every term"
    assert bool((t["entity"].features(item_idx, 1)[5] > 0).any()) and bool((t["cold_entity"].features(item_idx, 1)[0] > 0).any())
    assert ts.active(0) == [] and ts.apply(raw, item_idx, 0, h, cov) is raw, "every weight 0: the scores themselves"


def test_tables_give_the_scores_of_the_sparse_paths_within_their_memory_budget(tiny):
    terms = every_term(tiny)
    params = {"cooccurrence": {0: {"weight": 1.5, "decay": 0.7}, 1: {"weight": 2.0, "decay": 0.5}},
              "text_similarity": {0: {"weight": 2.0, "decay": 0.6}, 1: {"weight": 1.0, "decay": 0.8}},
              "next_item": {0: {"weight": 1.0}, 1: {"weight": 3.0}}, "cold_popularity": {0: {"weight": 0.3}, 1: {"weight": 0.4}}}
    ts = TermSet(terms, params, DOMAINS)
    batch = tiny.batch([[1, 2, 6, 3, 2, 7, 1], [8, 9, 4, 9], [5], [6, 7, 6], []], T=8)
    want = []
    for d in (0, 1):
        raw, h, cov = model_scores(tiny, batch, d)
        want.append(ts.apply(raw, batch["item_idx"], d, h, cov))
    # domain 1 (4 items): cooc 4 x 4 + text 4 x 4 + next 5 x 4 floats = 208 bytes; domain 0 (5 items) 320 more
    assert ts.prepare(max_bytes=300) == [1]
    assert ts.prepare(max_bytes=528) == [1, 0]
    assert sorted(terms[1]._tables) == [0, 1] and terms[1]._tables[0].shape == (6, 5), "next item: row n_d = no latest"
    for d in (0, 1):
        raw, h, cov = model_scores(tiny, batch, d)
        torch.testing.assert_close(ts.apply(raw, batch["item_idx"], d, h, cov), want[d], rtol=1e-5, atol=1e-5)


def test_save_load_keeps_terms_state_and_parameters_by_domain_name(tiny, tmp_path):
    terms = every_term(tiny)
    params = {"cooccurrence": {1: {"weight": 2.0, "decay": 0.6}}, "cold_popularity": {0: {"weight": 0.5}},
              "next_item": {0: {"weight": 1.0}, 1: {"weight": 0.0}}}
    ts = TermSet(terms, params, DOMAINS, report={"fitted_on": "test"})
    ts.save(tmp_path)
    meta = json.loads((tmp_path / "terms.json").read_text())
    assert [t["name"] for t in meta["terms"]] == list(registered())
    assert meta["terms"][0]["options"] == {"k": 200, "shrink": 10.0} and meta["report"] == {"fitted_on": "test"}
    assert meta["params"]["cooccurrence"] == {"movies": {"weight": 2.0, "decay": 0.6}} and meta["params"]["text_similarity"] == {}
    assert sorted(p.name for p in (tmp_path / "terms").iterdir()) == sorted(f"{n}.safetensors" for n in registered())
    loaded = TermSet.load(tmp_path, tiny.catalog())
    assert loaded.params == ts.params and loaded.domains == DOMAINS and loaded.report == ts.report
    assert loaded.terms[0].indices.dtype == torch.int32
    batch = tiny.batch([[1, 2, 6, 3], [8, 9], [5, 2]], T=4)
    for d in (0, 1):
        raw, h, cov = model_scores(tiny, batch, d)
        torch.testing.assert_close(loaded.apply(raw, batch["item_idx"], d, h, cov), ts.apply(raw, batch["item_idx"], d, h, cov),
                                   rtol=0, atol=0)
    params["category"] = {1: {"weight": 1.0, "decay": 1.0, "transfer": 0.0}}
    TermSet(terms, params, DOMAINS).save(tmp_path)
    meta = json.loads((tmp_path / "terms.json").read_text())
    del meta["params"]["category"]["movies"]["transfer"]  # as saved before the term had that parameter
    (tmp_path / "terms.json").write_text(json.dumps(meta))
    assert TermSet.load(tmp_path, tiny.catalog()).params["category"] == params["category"], "its neutral value"
    with pytest.raises(AssertionError, match="weights must be >= 0"):
        TermSet(terms, {"next_item": {0: {"weight": -1.0}}}, DOMAINS)
    with pytest.raises(AssertionError, match="parameters must be weight"):
        TermSet(terms, {"cooccurrence": {0: {"weight": 1.0}}}, DOMAINS)


def test_settings_try_weight_zero_once_and_every_other_weight_with_every_decay():
    got = CooccurrenceTerm.settings({"weight": (0.0, 1.0, 2.0), "decay": (1.0, 0.5)})
    assert got == [{"weight": 0.0, "decay": 1.0}, {"weight": 1.0, "decay": 1.0}, {"weight": 1.0, "decay": 0.5},
                   {"weight": 2.0, "decay": 1.0}, {"weight": 2.0, "decay": 0.5}]
    assert len(CooccurrenceTerm.settings()) == 1 + 7 * 4 and NextItemTerm.settings({"weight": (0.0,)}) == [{"weight": 0.0}]
    ties = sorted(got, key=CooccurrenceTerm.preference, reverse=True)
    assert ties[0] == {"weight": 0.0, "decay": 1.0} and ties[1:3] == [{"weight": 1.0, "decay": 1.0}, {"weight": 1.0, "decay": 0.5}]
    with pytest.raises(AssertionError, match="has no parameter"):
        NextItemTerm.settings({"decay": (0.5,)})


def test_every_module_of_the_package_is_imported_and_each_term_registered():
    modules = {m.name for m in pkgutil.iter_modules(crossrec.rerank.__path__)}
    assert {"base", "fit", "cooccurrence", "text_similarity", "next_item", "cold_popularity", "cold_text", "entity",
            "category", "cold_category"} <= modules
    assert all(f"crossrec.rerank.{m}" in sys.modules for m in modules)
    assert list(registered()) == ["cooccurrence", "category", "text_similarity", "entity", "next_item", "cold_popularity",
                                  "cold_category", "cold_text", "cold_entity"]
    with pytest.raises(AssertionError, match="is taken by"):
        type("Impostor", (NextItemTerm,), {"name": "cooccurrence"})


def test_a_sixth_term_is_one_class_fitted_saved_loaded_and_printed_with_no_other_edit(two_domains, tmp_path, monkeypatch):
    """A term defined here (as a new module of crossrec.rerank would define it) is picked up by every generic part:
    the fit (all registered terms by default), the artifact files and the train job's printing."""
    from crossrec.model.artifact import load_artifact, save_artifact
    from crossrec.rerank.fit import report_lines

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # the class registers into this copy only

    class NextIdBoost(ScoreTerm):
        """Warm users: 1 for the item whose id follows their latest one (a deliberately simple sixth term)."""

        name = "next_id"
        applies_to = "warm"
        order = 35
        weights = (0.0, 1.0)

        def fit(self, events, catalog):
            self.load_state_dict({"events": torch.tensor([float(len(events))])}, catalog)

        def state_dict(self):
            return {"events": self.events}

        def load_state_dict(self, state, catalog):
            self.catalog, self.events = catalog, state["events"]

        def features(self, item_idx, domain):
            last = item_idx.gather(1, ((item_idx != 0).sum(1, keepdim=True) - 1).clamp(min=0))  # (B, 1)
            return (self.catalog.domain_items[domain][None, :] == last + 1).float()

    assert list(registered())[5] == "next_id", "registered by its definition, in its order"
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):  # books only; the target is the book after the latest one
        hist = [int(x) for x in rng.choice(np.arange(1, 12), size=4, replace=False)]
        target = hist[-1] + 1 if hist[-1] + 1 not in hist else next(i for i in range(1, 13) if i not in hist)
        ts = list(range(100 * u, 100 * u + 4))
        rows.append((f"u{u}", "train", "*", hist, [0] * 4, ts, None, None, False, 4))
        rows.append((f"u{u}", "valid", "books", hist, [0] * 4, ts, target, ts[-1] + 1, False, 4))
    valid = two_domains.valid(rows)
    model = two_domains.model(0)
    terms, report = fit_all(model, valid)
    assert [t.name for t in terms.terms][3] == "next_id"
    rec = report["terms"]["next_id"]["domains"]["books"]
    assert [t["weight"] for t in rec["valid_ndcg@10"]] == [0.0, 1.0] and rec["rows"] == 40
    assert rec["params"] == {"weight": 1.0}, rec
    import pandas as pd

    index = two_domains.index[["item_idx", "domain", "item_id", "domain_idx", "domain_item_idx"]]
    folder = save_artifact(tmp_path / "art", model, terms, pd.DataFrame(index), {"terms": report})
    assert (folder / "terms" / "next_id.safetensors").is_file()
    loaded = load_artifact(folder)
    assert [t.name for t in loaded.terms.terms] == [t.name for t in terms.terms]
    assert loaded.terms.params["next_id"] == {0: {"weight": 1.0}}
    assert float(loaded.terms.terms[3].events) == len(valid.train_with_targets()), "refitted for the artifact"
    assert [line for line in report_lines(loaded.metrics["terms"]) if line.startswith("term next_id")] == [
        f"term next_id          books: weight 1; valid NDCG@10 {rec['valid_ndcg@10'][1]['value']:.4f} "
        f"({rec['valid_ndcg@10'][0]['value']:.4f} without; 40 valid rows)"]


def fit_all(model, valid):
    from crossrec.rerank.fit import fit_terms

    return fit_terms(model, valid, options={"cooccurrence": {"k": 5, "shrink": 1.0}})


def test_an_item_without_training_events_stands_in_with_its_nearest_trained_item_of_its_domain(tiny):
    from crossrec.rerank.base import stand_ins

    catalog = tiny.catalog()
    table = torch.randn(10, 4, generator=torch.Generator().manual_seed(3))
    table[3] = 2.5 * table[5]  # item 3 (books) looks like book 5; item 8 (movies) like movie 9
    table[8] = table[9] + 0.01
    table[7] = table[2]  # ... and movie 7 like book 2, which is of another domain
    counts = torch.tensor([0, 4, 1, 0, 2, 3, 0, 5, 0, 1])  # 3, 6, 8 never in training; 6's nearest is some movie
    got = stand_ins(table, catalog, counts)
    assert got[[1, 2, 4, 5, 7, 9]].tolist() == [1, 2, 4, 5, 7, 9], "trained items stand for themselves"
    assert int(got[3]) == 5 and int(got[8]) == 9 and int(got[6]) in (7, 9)
    assert stand_ins(table, catalog, torch.zeros(10, dtype=torch.long)).tolist() == list(range(10)), "no trained item"


def test_collaborative_terms_give_an_item_its_stand_ins_values_and_the_set_keeps_them(tiny, tmp_path):
    terms = every_term(tiny)
    params = {"cooccurrence": {0: {"weight": 2.0, "decay": 1.0}}, "text_similarity": {0: {"weight": 1.0, "decay": 1.0}}}
    stand_in = torch.arange(10)
    stand_in[3] = 2  # book 3 takes book 2's collaborative values
    ts, plain = TermSet(terms, params, DOMAINS, stand_in=stand_in), TermSet(terms, params, DOMAINS)
    item_idx = tiny.batch([[1, 2, 4], [5, 1]], T=4)["item_idx"]
    t = {x.name: x for x in terms}
    cooc, own = ts.values(t["cooccurrence"], item_idx, 0, params["cooccurrence"][0]), plain.values(
        t["cooccurrence"], item_idx, 0, params["cooccurrence"][0])
    col = {int(i): j for j, i in enumerate(tiny.model.domain_items(0))}
    assert torch.equal(cooc[:, col[3]], own[:, col[2]]) and torch.equal(cooc[:, col[1]], own[:, col[1]])
    assert bool((own[:, col[3]] != own[:, col[2]]).any()), "the data tell the two apart"
    text = params["text_similarity"][0]
    assert torch.equal(ts.values(t["text_similarity"], item_idx, 0, text), plain.values(t["text_similarity"], item_idx, 0, text)), \
        "a term read from the items' own content keeps its values"
    ts.save(tmp_path)
    assert torch.equal(TermSet.load(tmp_path, tiny.catalog()).stand_in, stand_in)
    plain.save(tmp_path / "plain")
    assert TermSet.load(tmp_path / "plain", tiny.catalog()).stand_in is None


@pytest.mark.parametrize("tables", [False, True], ids=["sparse", "tables"])
def test_apply_adds_into_the_scores_only_in_place_and_gives_the_same_values_either_way(tiny, tables):
    terms = every_term(tiny)
    params = {"cooccurrence": {0: {"weight": 2.0, "decay": 0.6}, 1: {"weight": 1.0, "decay": 1.0}},
              "text_similarity": {0: {"weight": 1.5, "decay": 0.5}, 1: {"weight": 3.0, "decay": 0.8}},
              "next_item": {0: {"weight": 1.0}, 1: {"weight": 2.0}}, "entity": {1: {"weight": 0.5, "decay": 0.8}},
              "cold_popularity": {0: {"weight": 0.4}, 1: {"weight": 0.5}}}
    stand_in = torch.arange(10)
    stand_in[3] = 2  # book 3 takes book 2's collaborative values: those terms keep the path through values() in domain 0
    batch = tiny.batch([[1, 2, 6, 3, 2, 7, 1], [8, 9, 4, 9], [5], [6, 7, 6], [], [9, 2]], T=8)
    for ts in (TermSet(terms, params, DOMAINS), TermSet(terms, params, DOMAINS, stand_in=stand_in)):
        if tables:
            assert ts.prepare() == [1, 0]
        for d in (0, 1):
            raw, h, cov = model_scores(tiny, batch, d)
            kept = raw.clone()
            want = ts.apply(raw, batch["item_idx"], d, h, cov)
            assert torch.equal(raw, kept) and want is not raw, "out of place: the caller's scores stay as they were"
            got = ts.apply(raw, batch["item_idx"], d, h, cov, inplace=True)
            assert got is raw, "in place: the caller's tensor holds the result"
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(want, kept), "the terms change the scores"
