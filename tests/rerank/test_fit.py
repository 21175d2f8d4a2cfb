"""fit_terms: each term's parameters chosen per domain on validation, and the TermSet it returns must score the
validation split, through the evaluation protocol, exactly as the fit reported for every setting it tried."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossrec.evaluate.protocol import evaluate, transformer_score_fn  # noqa: E402
from crossrec.rerank.base import TermSet  # noqa: E402
from crossrec.rerank.cooccurrence import same_domain_similarity  # noqa: E402
from crossrec.rerank.fit import fit_terms, report_lines  # noqa: E402
from support import best_that_counts  # noqa: E402

OFF = {"weight": (0.0,)}
MOVIE_P = 0.5 ** np.arange(9) / (0.5 ** np.arange(9)).sum()  # movies 13..21 drawn by popularity: 13 first, then 14...
K5 = {"cooccurrence": {"k": 5, "shrink": 1.0}}


def ndcg(model, valid, terms, params, domain, segment="all", input_domains=None) -> float:
    """Validation NDCG@10 of ``model`` with ``terms`` at ``params`` (the evaluation protocol's)."""
    scored = TermSet(terms.terms, params, valid.domains)  # as the terms were chosen: before the stand-ins
    recs = evaluate("m", transformer_score_fn(model, valid, scored, input_domains=input_domains), valid, ks=(10,),
                    domains=[domain])
    return next(x["value"] for x in recs if x["metric"] == "ndcg" and x["segment"] == segment)


def tried(record) -> dict[tuple, float]:
    return {tuple(t[k] for k in record["params"]): t["value"] for t in record["valid_ndcg@10"]}


def test_cooccurrence_weight_and_decay_score_on_validation_what_the_fit_reported(two_domains):
    rng = np.random.default_rng(3)
    dom = two_domains.dom
    rows = []
    for u in range(80):  # two taste groups per domain: items co-occur, so the term changes ranks
        g = u % 2
        hist = [int(x) for x in rng.choice(np.r_[1 + 6 * g: 7 + 6 * g, 13 + 4 * g: 18 + 4 * g], size=8)]
        ts = list(range(100 * u, 100 * u + 8))
        d = int(dom[hist[-1] - 1])
        for split, n in (("train", 7), ("valid", 7)):
            tgt = (None, None) if split == "train" else (hist[7], ts[7])
            rows.append((f"u{u}", split, "*" if split == "train" else ["books", "movies"][d], hist[:n],
                         [int(dom[i - 1]) for i in hist[:n]], ts[:n], *tgt, False, n))
    valid = two_domains.valid(rows)
    model = two_domains.model(0)
    terms, report = fit_terms(model, valid, ["cooccurrence"], options=K5, refit=False)
    for d, rec in report["terms"]["cooccurrence"]["domains"].items():
        d_idx = valid.domains.index(d)
        assert terms.params["cooccurrence"][d_idx] == rec["params"]
        values = tried(rec)
        assert len(values) == 1 + 7 * 4, "weight 0 once, every other weight with each decay"
        best = (rec["params"]["weight"], rec["params"]["decay"])
        assert best == best_that_counts(rec)
        # chosen on the rows with history in the domain; the term leaves the others (a constant part of the
        # domain's NDCG sum) as they are
        n_all, n_warm = len(valid.tests[d_idx].rows), rec["rows"]
        rest = n_all * ndcg(model, valid, terms, {}, d) - n_warm * values[(0.0, 1.0)]
        for (w, r), value in values.items():  # every pair tried: the set with that pair scores what was reported
            got = ndcg(model, valid, terms, {"cooccurrence": {d_idx: {"weight": w, "decay": r}}}, d)
            assert n_all * got == pytest.approx(n_warm * value + rest, abs=1e-5), (d, w, r)
    assert [r["rows"] for r in report["terms"]["cooccurrence"]["domains"].values()] == [39, 39], \
        "two rows of each domain have no history there: not the term's rows"
    recs = report["terms"]["cooccurrence"]["domains"].values()
    assert any(r["params"]["weight"] > 0 and r["params"]["decay"] < 1 for r in recs), "a decayed term was chosen somewhere"
    assert len({round(v["value"], 6) for r in recs for v in r["valid_ndcg@10"]}) > 2, "the settings rank differently here"
    strict, report = fit_terms(model, valid, ["cooccurrence"], options=K5, refit=False, min_gain_se=1e6)
    assert report["min_gain_se"] == 1e6 and strict.active(0) == strict.active(1) == [], "no gain is that sure: off"
    assert all(r["params"]["weight"] == 0.0 and len(r["valid_ndcg@10"]) == 29
               for r in report["terms"]["cooccurrence"]["domains"].values())
    # for the artifact the state is refitted on the training events plus the validation targets
    refit, report = fit_terms(model, valid, ["cooccurrence"], options=K5, grids={"cooccurrence": OFF})
    want = same_domain_similarity(valid.train_with_targets(), k=5, shrink=1.0)
    assert report["fitted_on"] == "train events + valid targets"
    assert all(torch.equal(a, b.to(a.dtype)) for a, b in zip((refit.terms[0].indptr, refit.terms[0].indices,
                                                              refit.terms[0].values), want))


def test_cold_popularity_weight_is_chosen_on_users_new_to_the_domain(two_domains):
    """Users with book history only and a movie target that follows movie popularity: the fit must turn the
    popularity term on for movies, and the set it returns must score those validation rows as reported."""
    rng = np.random.default_rng(5)
    dom = two_domains.dom
    rows = []
    for u in range(160):
        books = [int(x) for x in rng.integers(1, 13, size=4)]
        new = u < 100  # users new to movies: book history, a movie target drawn by popularity
        movies = [] if new else [int(x) for x in rng.choice(np.arange(13, 22), size=3, p=MOVIE_P)]
        hist = books + movies
        ts = list(range(100 * u, 100 * u + len(hist)))
        target = int(rng.choice(np.arange(13, 22), p=MOVIE_P)) if new else int(rng.integers(1, 13))
        rows.append((f"u{u}", "train", "*", hist, [int(dom[i - 1]) for i in hist], ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "movies" if new else "books", hist, [int(dom[i - 1]) for i in hist], ts, target,
                     ts[-1] + 1, new, len(hist)))
    valid = two_domains.valid(rows)
    model = two_domains.model(1)  # untrained: knows no popularity
    names = ["cold_popularity", "cold_text"]
    grids = {"cold_popularity": {"weight": (0.0, 0.3, 0.7)}, "cold_text": OFF}  # 0.3, 0.7: not exact in float32
    terms, report = fit_terms(model, valid, names, grids=grids, refit=False)
    cold = report["terms"]["cold_popularity"]["domains"]["movies"]
    assert cold["rows"] == 100 and cold["simulated"] == 0 and cold["params"]["weight"] in (0.3, 0.7), cold
    books = report["terms"]["cold_popularity"]["domains"]["books"]  # none new to books: its 60 rows, read from movies
    assert books["rows"] == books["simulated"] == 60 and len(books["valid_ndcg@10"]) == 3, books
    assert terms.params["cold_popularity"] == {0: books["params"], 1: cold["params"]}
    values = tried(cold)
    assert values[(cold["params"]["weight"],)] > values[(0.0,)] + 0.05, values
    for (p,), value in values.items():  # the cold_start segment = the rows the weight was chosen on
        got = ndcg(model, valid, terms, {"cold_popularity": {1: {"weight": p}}}, "movies", "cold_start")
        assert got == pytest.approx(value, abs=1e-6), p
    few = fit_terms(model, valid, names, min_cold_rows=101)[1]["terms"]
    # 100 new to movies and no one to simulate (no other user has a movie target): under 101 rows, off
    assert few["cold_popularity"]["domains"]["movies"] == {
        "params": {"weight": 0.0}, "rows": 100, "simulated": 0, "valid_ndcg@10": [],
        "skipped": "too few validation rows to choose it, under 101"}
    assert few["cold_text"]["domains"]["movies"]["params"] == {"weight": 0.0, "decay": 1.0}


def test_cold_popularity_weight_falls_back_to_users_active_in_the_domain_read_from_the_others(two_domains):
    """No validation row of a user new to movies (every user has movie history), movie targets that follow
    popularity: the weight is chosen on the movie rows read from their book events only, and what the fit reports
    for every weight must be what the evaluation protocol gives for those rows read from books alone."""
    rng = np.random.default_rng(6)
    dom = two_domains.dom
    rows = []
    for u in range(160):
        books = [int(x) for x in rng.integers(1, 13, size=4)]
        movies = [int(x) for x in rng.choice(np.arange(13, 22), size=3, p=MOVIE_P)]  # popularity's training events
        hist = books + movies if u % 2 else movies + books
        ts = list(range(100 * u, 100 * u + len(hist)))
        to_movies = u < 100
        target = int(rng.choice(np.arange(13, 22), p=MOVIE_P)) if to_movies else int(rng.integers(1, 13))
        doms = [int(dom[i - 1]) for i in hist]
        rows.append((f"u{u}", "train", "*", hist, doms, ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "movies" if to_movies else "books", hist, doms, ts, target, ts[-1] + 1, False,
                     len(hist)))
    valid = two_domains.valid(rows)
    model = two_domains.model(2)
    grids = {"cold_popularity": {"weight": (0.0, 0.3, 0.7)}, "cold_text": OFF}
    terms, report = fit_terms(model, valid, ["cold_popularity", "cold_text"], grids=grids, refit=False)
    cold = report["terms"]["cold_popularity"]["domains"]["movies"]
    assert cold["simulated"] == cold["rows"] == 100 and cold["params"]["weight"] in (0.3, 0.7), cold
    values = tried(cold)
    assert sorted(values) == [(0.0,), (0.3,), (0.7,)] and values[(cold["params"]["weight"],)] > values[(0.0,)] + 0.05
    for (p,), value in values.items():
        got = ndcg(model, valid, terms, {"cold_popularity": {1: {"weight": p}}}, "movies", input_domains=["books"])
        assert got == pytest.approx(value, abs=1e-6), p
    capped = fit_terms(model, valid, ["cold_popularity"], grids={"cold_popularity": grids["cold_popularity"]},
                       simulated_cold_rows=70)[1]
    assert capped["terms"]["cold_popularity"]["domains"]["movies"]["rows"] == 70


def test_text_similarity_weight_is_chosen_where_the_next_item_has_the_closest_text(two_domains):
    """Validation targets that are the text's nearest neighbour of the user's latest item in the domain: the fit
    must turn the text-similarity term on (on top of the co-occurrence term it chose first), and the set must score
    the validation split as reported for every setting tried."""
    import torch.nn.functional as F

    rng = np.random.default_rng(7)
    dom = two_domains.dom
    model = two_domains.model(2)  # untrained: its own scores know nothing of the text's neighbours
    unit = F.normalize(model.item_encoder.text_emb, dim=1)
    cos = (unit @ unit.T).numpy()
    rows = []
    for u in range(120):
        d = u % 2
        own = np.flatnonzero(dom == d) + 1
        hist = [int(x) for x in rng.choice(own, size=3, replace=False)]
        hist += [int(x) for x in rng.choice(np.flatnonzero(dom != d) + 1, size=2, replace=False)]
        rng.shuffle(hist[:4])
        cand = [j for j in own if j not in hist]
        latest = [i for i in hist if dom[i - 1] == d][-1]
        target = int(max(cand, key=lambda j: cos[latest, j]))
        ts = list(range(100 * u, 100 * u + len(hist)))
        doms = [int(dom[i - 1]) for i in hist]
        rows.append((f"u{u}", "train", "*", hist, doms, ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", ["books", "movies"][d], hist, doms, ts, target, ts[-1] + 1, False, len(hist)))
    valid = two_domains.valid(rows)
    grids = {"cooccurrence": {"weight": (0.0, 1.0)}, "text_similarity": {"weight": (0.0, 1.0, 4.0)}}
    terms, report = fit_terms(model, valid, ["cooccurrence", "text_similarity"], options=K5, grids=grids, refit=False)
    for d in valid.domains:
        d_idx = valid.domains.index(d)
        cooc = report["terms"]["cooccurrence"]["domains"][d]
        text = report["terms"]["text_similarity"]["domains"][d]
        values = tried(text)
        assert len(values) == 1 + 2 * 4, "weight 0 once, every other weight with every decay"
        best = (text["params"]["weight"], text["params"]["decay"])
        assert best == best_that_counts(text) and best[0] > 0
        assert values[best] > values[(0.0, 1.0)] + 0.1, (d, values)
        assert values[(0.0, 1.0)] == pytest.approx(tried(cooc)[best_that_counts(cooc)], abs=1e-9), "on top of co-occurrence"
        assert terms.params["text_similarity"][d_idx] == text["params"]
        for (t, r), value in values.items():  # the co-occurrence term stays at its chosen weight and decay
            params = {"cooccurrence": {d_idx: cooc["params"]}, "text_similarity": {d_idx: {"weight": t, "decay": r}}}
            assert ndcg(model, valid, terms, params, d) == pytest.approx(value, abs=1e-6), (d, t, r)
    off, report = fit_terms(model, valid, options=K5, grids={n: OFF for n in ("cooccurrence", "text_similarity", "next_item",
                                                                               "cold_popularity", "cold_text")})
    skipped = {n for n, e in report["terms"].items() if "domains" not in e}
    assert skipped == {"entity", "cold_entity", "category", "cold_category"}, "no entity table, no categories"
    for entry in report["terms"].values():
        assert all(r["valid_ndcg@10"] == [] and r["params"]["weight"] == 0.0 and "skipped" in r
                   for r in entry.get("domains", {}).values())
    assert off.active(0) == [] and off.active(1) == []


@pytest.mark.parametrize("new_users", [True, False], ids=["users-new-to-movies", "simulated-from-active-users"])
def test_cold_text_weight_is_chosen_where_a_new_users_target_has_the_closest_text_to_their_other_events(two_domains, new_users):
    """Movie targets that are the text's nearest movie to the user's two oldest books, for users new to movies (or,
    when every user has movie history, for users read from their books only): the fit must turn the cross-domain
    text term on for movies, on top of the popularity weight it chose first, and the set must score those rows as
    reported for every (weight, decay) tried."""
    import torch.nn.functional as F

    rng = np.random.default_rng(8)
    dom = two_domains.dom
    model = two_domains.model(3)
    unit = F.normalize(model.item_encoder.text_emb, dim=1)
    cos = (unit @ unit.T).numpy()
    rows = []
    for u in range(160):
        books = [int(x) for x in rng.choice(np.arange(1, 13), size=4, replace=False)]
        to_movies = u < 100
        movies = [] if (new_users and to_movies) else [int(x) for x in rng.choice(np.arange(13, 22), size=2, replace=False)]
        hist = movies + books  # the latest events are books; the target is closest to the two oldest
        target = (int(max((j for j in range(13, 22) if j not in hist), key=lambda j: cos[books[0], j] + cos[books[1], j]))
                  if to_movies else int(rng.choice([b for b in range(1, 13) if b not in hist])))
        ts = list(range(100 * u, 100 * u + len(hist)))
        doms = [int(dom[i - 1]) for i in hist]
        rows.append((f"u{u}", "train", "*", hist, doms, ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "movies" if to_movies else "books", hist, doms, ts, target, ts[-1] + 1,
                     new_users and to_movies, len(hist)))
    valid = two_domains.valid(rows)
    grids = {"cold_popularity": {"weight": (0.0, 0.5)}, "cold_text": {"weight": (0.0, 1.0, 4.0), "decay": (1.0, 0.5)}}
    terms, report = fit_terms(model, valid, ["cold_popularity", "cold_text"], grids=grids, refit=False)
    cold = report["terms"]["cold_popularity"]["domains"]["movies"]
    xtext = report["terms"]["cold_text"]["domains"]["movies"]
    assert cold["rows"] == xtext["rows"] == 100 and cold["simulated"] == (0 if new_users else 100), cold
    values = tried(xtext)
    assert sorted(values) == [(0.0, 1.0), (1.0, 0.5), (1.0, 1.0), (4.0, 0.5), (4.0, 1.0)]
    best = (xtext["params"]["weight"], xtext["params"]["decay"])
    assert best == best_that_counts(xtext) and best[0] > 0
    assert values[best] > values[(0.0, 1.0)] + 0.1, values
    assert values[(0.0, 1.0)] == pytest.approx(tried(cold)[(cold["params"]["weight"],)]), "added on top of popularity"
    segment = "cold_start" if new_users else "all"
    for (x, r), value in values.items():
        params = {"cold_popularity": {1: cold["params"]}, "cold_text": {1: {"weight": x, "decay": r}}}
        got = ndcg(model, valid, terms, params, "movies", segment, input_domains=None if new_users else ["books"])
        assert got == pytest.approx(value, abs=1e-6), (x, r)


def test_next_item_weight_is_chosen_where_the_next_item_follows_the_latest_one(two_domains):
    """Each book is followed by one fixed book in the training sequences, and the validation target is that book's
    follower: the fit must turn the next-item term on, the set must score the validation split as reported for every
    weight tried, and the train job prints one line per term and domain."""
    rng = np.random.default_rng(11)
    dom = two_domains.dom
    nxt = {i: i % 12 + 1 for i in range(1, 13)}  # book i is followed by book i + 1 (12 by 1)
    rows = []
    for u in range(100):
        books = [int(rng.integers(1, 13))]
        while len(books) < 4:
            books.append(nxt[books[-1]])
        hist = books[:3] + [int(rng.integers(13, 22))]
        ts = list(range(100 * u, 100 * u + len(hist)))
        doms = [int(dom[i - 1]) for i in hist]
        rows.append((f"u{u}", "train", "*", hist, doms, ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "books", hist, doms, ts, books[3], ts[-1] + 1, False, len(hist)))
    valid = two_domains.valid(rows)
    model = two_domains.model(3)
    terms, report = fit_terms(model, valid, ["next_item"], grids={"next_item": {"weight": (0.0, 0.5, 3.0)}}, refit=False)
    rec = report["terms"]["next_item"]["domains"]["books"]
    values = tried(rec)
    assert set(values) == {(0.0,), (0.5,), (3.0,)} and rec["params"]["weight"] > 0
    assert values[(rec["params"]["weight"],)] > values[(0.0,)] + 0.2, values
    for (m,), value in values.items():
        assert ndcg(model, valid, terms, {"next_item": {0: {"weight": m}}}, "books") == pytest.approx(value, abs=1e-6), m
    assert report_lines(report) == [
        f"term next_item        books: weight {rec['params']['weight']:g}; valid NDCG@10 "
        f"{values[(rec['params']['weight'],)]:.4f} ({values[(0.0,)]:.4f} without; 100 valid rows)",
        "term stand_in         books: off (every item has training events; 100 valid rows)"]


def test_a_term_the_model_cannot_use_is_left_out_and_reported(two_domains):
    from crossrec.model.config import ModelConfig
    from crossrec.model.transformer import CrossDomainTransformer

    rows = [(f"u{u}", split, "*" if split == "train" else "books", [1, 2, 13], [0, 0, 1], [1, 2, 3],
             *((None, None) if split == "train" else (3 + u % 5, 4)), False, 3) for u in range(10) for split in ("train", "valid")]
    valid = two_domains.valid(rows)
    text_model = two_domains.model(0)
    no_text = CrossDomainTransformer(ModelConfig(n_items=21, n_domains=2, text_dim=8, d_model=16, n_layers=1, n_heads=2,
                                                 use_text=False), _features(text_model))
    terms, report = fit_terms(no_text, valid, ["text_similarity", "next_item"])
    assert [t.name for t in terms.terms] == ["next_item"]
    assert report["terms"]["text_similarity"] == {"options": {}, "applies_to": "warm",
                                                  "skipped": "the model has no frozen text table (--no-text or a fine-tuned text encoder)"}
    assert report_lines(report)[0] == ("term text_similarity  off (the model has no frozen text table (--no-text or a "
                                       "fine-tuned text encoder))")


def _features(model):
    from crossrec.model.encoder import ItemFeatures

    enc = model.item_encoder
    return ItemFeatures(None, enc.item_domain, enc.item_attr, [model.domain_items(d) for d in range(2)])


def test_too_few_users_new_to_a_domain_are_joined_by_simulated_ones(two_domains):
    """100 users new to movies and 60 with movie history too, all with movie targets: under ``enough_cold_rows`` the
    cold terms are chosen on the 100 plus the 60 read from their books only, and what the fit reports for a setting
    is the NDCG@10 of those 160 rows; with enough new users, on them alone."""
    rng = np.random.default_rng(11)
    dom = two_domains.dom
    rows = []
    for u in range(160):
        books = [int(x) for x in rng.integers(1, 13, size=4)]
        movies = [] if u < 100 else [int(x) for x in rng.choice(np.arange(13, 22), size=3, p=MOVIE_P)]
        hist = books + movies
        ts = list(range(100 * u, 100 * u + len(hist)))
        doms = [int(dom[i - 1]) for i in hist]
        target = int(rng.choice(np.arange(13, 22), p=MOVIE_P))
        rows.append((f"u{u}", "train", "*", hist, doms, ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "movies", hist, doms, ts, target, ts[-1] + 1, u < 100, len(hist)))
    valid = two_domains.valid(rows)
    model = two_domains.model(5)
    grids = {"cold_popularity": {"weight": (0.0, 0.7)}}
    terms, report = fit_terms(model, valid, ["cold_popularity"], grids=grids, refit=False, enough_cold_rows=500)
    joined = report["terms"]["cold_popularity"]["domains"]["movies"]
    assert (joined["rows"], joined["simulated"]) == (160, 60), joined
    untrained = np.flatnonzero(np.bincount(valid.train.item, minlength=22)[1:] == 0) + 1  # rare movies
    assert report["stand_in"]["items"] == len(untrained) > 0 and set(terms.stand_in[untrained].tolist()).isdisjoint(untrained)
    values = tried(joined)
    assert len(values) == 2
    for (w,), value in values.items():  # every row read from its books: the new users' whole history, the others' part
        params = {"cold_popularity": {1: {"weight": w}}}
        assert value == pytest.approx(ndcg(model, valid, terms, params, "movies", input_domains=["books"]), abs=1e-6), w
    alone = fit_terms(model, valid, ["cold_popularity"], grids=grids, refit=False, enough_cold_rows=100)[1]
    assert {k: alone["terms"]["cold_popularity"]["domains"]["movies"][k] for k in ("rows", "simulated")} == {
        "rows": 100, "simulated": 0}


def test_a_new_item_takes_its_stand_ins_collaborative_values_when_validation_says_so(two_domains):
    """Book 12 has no training event and the model represents it as book 11; users of books 1-3 and 11 go to book 3 or
    to book 12: co-occurrence lifts book 11, so the stand-in weight that gives 12 the values of 11 is chosen, and the
    set scores the validation rows as reported for every weight."""
    rng = np.random.default_rng(12)
    group = [1, 2, 3, 11]
    model = two_domains.model(6)
    with torch.no_grad():  # book 12 looks like book 11 to the model
        model.item_encoder.text_emb[12] = model.item_encoder.text_emb[11]
        model.item_encoder.id_emb.weight[12] = model.item_encoder.id_emb.weight[11]
    rows = []
    for u in range(120):
        hist = [int(x) for x in rng.choice(group if u % 2 else [1, 2, 11], size=5)] + [int(rng.integers(4, 11))]
        ts = list(range(100 * u, 100 * u + len(hist)))
        target = 12 if u % 2 else 3
        rows.append((f"u{u}", "train", "*", hist, [0] * len(hist), ts, None, None, False, len(hist)))
        rows.append((f"u{u}", "valid", "books", hist, [0] * len(hist), ts, target, ts[-1] + 1, False, len(hist)))
    valid = two_domains.valid(rows)
    terms, report = fit_terms(model, valid, ["cooccurrence"], options=K5, refit=False,
                              grids={"cooccurrence": {"weight": (0.0, 4.0), "decay": (1.0,)}})
    assert int(terms.stand_in[12]) == 11 and report["stand_in"]["items"] >= 1
    assert terms.params["cooccurrence"][0]["weight"] == 4.0
    record = report["stand_in"]["domains"]["books"]
    values = tried(record)
    assert record["params"]["weight"] > 0 and values[(record["params"]["weight"],)] > values[(0.0,)] + 0.1, record
    assert terms.stand_in_weight[0] == record["params"]["weight"]
    for (b,), value in values.items():
        scored = TermSet(terms.terms, terms.params, valid.domains, stand_in=terms.stand_in, stand_in_weight={0: b})
        recs = evaluate("m", transformer_score_fn(model, valid, scored), valid, ks=(10,), domains=["books"])
        assert next(x["value"] for x in recs if x["metric"] == "ndcg" and x["segment"] == "all") == pytest.approx(value, abs=1e-6)
