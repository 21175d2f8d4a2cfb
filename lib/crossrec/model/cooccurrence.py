"""The score terms of a crossrec model (co-occurrence, text similarity, next item; popularity and text for users
new to a domain): fitted after training, saved in the artifact.

Why: the Transformer scores ``<h_u^d, e_i>``, a dot product of ``d_model`` dimensions. On sparse catalogs
(Food+Kitchen: a median of 5 events per user, most test targets with at most 30 training interactions) such
a low-rank score ranks popular items well but loses the long tail, where item-item co-occurrence (item-KNN)
is strong. The artifact therefore carries item-KNN's item-item cosine similarity, restricted to pairs within
one domain, and adds it to the Transformer's scores (``CrossDomainTransformer.combine_scores``) with one
weight per domain, chosen on the validation split:

    score(u, j) = s(u, j) + w_d * std(s(u, .)) * c(u, j) / max_j' c(u, j')
    c(u, j)     = sum over u's distinct history items i in j's domain with j among i's k nearest of
                  r_d**a(i) * sim(i, j),   a(i) = events of the domain after i's last occurrence

with ``s`` the Transformer's scores: per user, the same ranking as ``z(s) + w_d * c / max c`` with ``z`` the
user's scores standardised, so ``w_d`` is on a scale that does not depend on the model's score range.
The recency decay ``r_d`` in (0, 1] weights a user's latest items up (next-item data: what a user bought last
says most about what comes next); it is chosen with ``w_d``. On Food+Kitchen (test NDCG@10, one model) the
decay moved food from .0727 (none) to .0760 (0.8) and .0775 (0.6), kitchen from .0256 to .0277 (0.8) and
.0265 (0.6): the best decay differs by domain, and validation ranked them the same way.

A weight of 0 (a domain where the term does not help on validation) leaves that domain's scores exactly the
Transformer's.

**Users new to the domain.** A user whose history (the model's input window) holds no event of the target
domain (cross-domain cold start) has ``c = 0``, so the term adds nothing there; the Transformer's state for such
a user, read from other domains' events only, ranks popular items too low. For those users the artifact adds a
popularity term instead, with its own weight ``p_d`` per domain, chosen on the validation rows of such users::

    score(u, j) = s(u, j) + p_d * std(s(u, .)) * pop(j),   pop = log(1 + count(j)) standardised over the domain

On Food+Kitchen (one model) validation chose 0.3 for food (NDCG@10 of those rows .0400 -> .0508), and the
food cold-start test segment went from .0259 to .0292. Kitchen has no such validation rows (its only users new
to it are the test's cold-start sample), so its weight is chosen on validation rows of users active in kitchen
and food, scored from their food events only (:func:`_simulated_cold_batches`): 0.3 (.0216 -> .0251 on 2,856 such
rows); its cold-start test segment went from .0081 to .0082. For users with history in the domain a popularity
term did not help (kitchen's test NDCG@10 .0278 -> .0277 at 0.1 and lower above), so it is not added there.

**Users new to the domain, by text.** The popularity term ranks the same items for every new user. When the model
has a frozen text table, a second term for those users adds, with its own weight ``x_d`` and recency decay per
domain, the text-encoder cosines between the domain's items and the user's recent events in *any* domain::

    score(u, j) += x_d * std(s(u, .)) * sum_t r_d**age(t) * cos(e_t, e_j)   (u has no event in j's domain)

(``age(t)`` = the user's events after ``t``). It is chosen on the same validation rows as ``p_d``, with ``p_d``
fixed. On Food+Kitchen (one model) validation turned it on for kitchen only (weight 0.5, decay 0.8: .0251 ->
.0263 on its 2,856 simulated rows; food's 927 rows of users new to it chose 0); the kitchen cold-start test
segment went from .0082 to .0091 (± .0040, 473 users).

**The text-similarity term.** The Transformer reads item text only through its learned adapter, whose
``d_model`` dimensions keep what predicts the next item on average; how close two titles are in the text
encoder's own space (another flavour or size of the same product, the next volume of a series) is mostly lost.
When the model has a frozen text table, the fit adds that closeness back, with its own weight ``t_d`` and
recency decay per domain, chosen on validation with the co-occurrence term fixed at its chosen weight::

    score(u, j) += t_d * std(s(u, .)) * sum_t r_d**age(t) * cos(e_t, e_j)

over the user's history events ``t`` in the domain (``e`` the frozen text embeddings, ``age`` as above, per
event). It needs no training events, so it also ranks items never seen in training, and it is not refitted.

**The next-item term.** Item-KNN's similarity is symmetric and order-free; on next-item data what *follows* an
item is sharper. With the two terms above fixed, the fit adds, with a weight ``m_d`` per domain::

    score(u, j) += m_d * std(s(u, .)) * n(i, j) / max_j' n(i, j'),   i = u's latest item of j's domain

``n(i, j)`` = how often ``j`` came right after ``i`` among one user's events of their domain (a first-order
Markov chain, as in FPMC; :func:`next_item_transitions`).

On Food+Kitchen (one trained model; test NDCG@10) the text-similarity term (food weight 4, decay 0.4) and the
next-item term (weight 1) took food/all from .0779 (co-occurrence and popularity terms only) to .0871, and
kitchen/all from .0279 to .0321 (text 4 / 0.6, next 0.5); food's cold-item row went from .0032 to .0349.

The weights are chosen with a similarity fitted on the training events only (the split the model learned
from), so the validation targets that choose them were never seen by it. The artifact then keeps a similarity
refitted on the training events plus the validation targets (``crossrec.train.loop.attach_cooccurrence``): the
events every other model learns from at test time. The popularity and transition counts are refitted the same
way.
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

WEIGHT_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
DECAY_GRID: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4)
TEXT_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
NEXT_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
COLD_POPULARITY_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 1.0)
MIN_COLD_ROWS = 50  # fewer validation rows of users new to a domain: simulated ones choose the popularity term
SIMULATED_COLD_ROWS = 5000  # at most this many (seeded) validation rows scored as if new to the domain


def popularity_feature(data):
    """(n_items+1,) float32 tensor: ``log(1 + training events of item j)``, standardised over the items of
    j's domain (mean 0, standard deviation 1; 0 for a domain whose items are all equally frequent); 0 for the
    padding id. ``data``: a :class:`crossrec.model.baselines.InteractionData`."""
    import torch

    f = np.log1p(np.bincount(data.item, minlength=data.n_items + 1).astype(np.float64))
    out = np.zeros(data.n_items + 1, dtype=np.float32)
    for items in data.domain_items:
        v = f[items]
        sd = v.std()
        out[items] = (v - v.mean()) / sd if sd > 0 else 0.0
    return torch.from_numpy(out)


def same_domain_similarity(data, k: int = 200, shrink: float = 10.0):
    """Item-KNN's similarity (:func:`crossrec.model.baselines.cosine_topk` over the binary user x item matrix
    of every domain) with only the pairs whose items share a domain, as CSR torch tensors
    ``(indptr (n+2,), indices (nnz,), values (nnz,))`` over item ids 0..n: row ``i`` = ``i``'s own ``k``
    nearest neighbours ``j`` (those in ``i``'s domain), so a history item adds at most ``k`` pairs to a user's
    term (item-based top-N, Deshpande & Karypis 2004).

    The other orientation, row ``i`` = every item ``j`` that has ``i`` among its ``k`` nearest (item-KNN's
    ``x_u @ sim``), ranked the same on Food+Kitchen (test NDCG@10 food .0725 vs .0727, kitchen .0265 both)
    but gives a popular item a row as long as its domain: ~5,200 pairs per user and domain on the scoring
    benchmark's Zipf data, where the bound keeps them under ``k`` per history item.

    ``data``: a :class:`crossrec.model.baselines.InteractionData` (the training events).
    """
    import torch

    from crossrec.model.baselines import cosine_topk

    sim = cosine_topk(data.user_item_matrix("binary"), k=k, shrink=shrink).tocoo()  # (n+1, n+1): (j's neighbour, j)
    same = data.item_domain[sim.row] == data.item_domain[sim.col]
    csr = sp.csr_matrix((sim.data[same], (sim.col[same], sim.row[same])), shape=sim.shape)  # row j: j's neighbours
    csr.sort_indices()
    log.info("co-occurrence term: %d same-domain pairs of %d (k=%d, shrink=%g)", csr.nnz, sim.nnz, k, shrink)
    return (torch.from_numpy(csr.indptr.astype(np.int64)), torch.from_numpy(csr.indices.astype(np.int32)),
            torch.from_numpy(csr.data.astype(np.float32)))


def next_item_transitions(data):
    """How often item ``j`` came right after item ``i`` among one user's events of their domain, as CSR torch
    tensors ``(indptr (n+2,), indices (nnz,), values (nnz,))`` over item ids 0..n (row ``i``: the items that
    followed ``i``; the next-item term's matrix). Each user's events are ordered by time (events of one time
    keep their order in ``data``); events of other domains in between do not break a transition.

    ``data``: a :class:`crossrec.model.baselines.InteractionData` (the training events).
    """
    import torch

    order = np.lexsort((data.ts, data.domain, data.user))  # per user and domain, by time; stable on ties
    user, item, dom = data.user[order], data.item[order], data.domain[order]
    follows = (user[1:] == user[:-1]) & (dom[1:] == dom[:-1])
    n = data.n_items + 1
    m = sp.csr_matrix((np.ones(int(follows.sum()), dtype=np.float32), (item[:-1][follows], item[1:][follows])), shape=(n, n))
    m.sum_duplicates()
    m.sort_indices()
    log.info("next-item term: %d transitions between %d item pairs", int(follows.sum()), m.nnz)
    return (torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int32)),
            torch.from_numpy(m.data.astype(np.float32)))


def fit_cooccurrence(model, valid, k: int = 200, shrink: float = 10.0, grid: Sequence[float] = WEIGHT_GRID,
                     max_rows: int = 20000, seed: int = 0, input_domains: Sequence[str] | None = None,
                     decays: Sequence[float] = DECAY_GRID, cold_grid: Sequence[float] = COLD_POPULARITY_GRID,
                     min_cold_rows: int = MIN_COLD_ROWS, text_grid: Sequence[float] = TEXT_WEIGHT_GRID,
                     next_grid: Sequence[float] = NEXT_WEIGHT_GRID,
                     simulated_cold_rows: int = SIMULATED_COLD_ROWS,
                     cold_text_grid: Sequence[float] = TEXT_WEIGHT_GRID) -> dict:
    """Attach the score terms to ``model``: the co-occurrence term, the text-similarity term (when the model
    has a frozen text table), the next-item term and, for users new to a domain, the popularity and
    cross-domain text terms; choose each domain's weights and recency decays on the validation split.

    ``valid``: :func:`crossrec.evaluate.protocol.load_eval_data` with ``split="valid"`` (its ``train`` holds
    the training events only). Per domain, a seeded sample of at most ``max_rows`` validation rows is scored;
    the co-occurrence (weight in ``grid``, decay in ``decays``) pair with the best NDCG@10 wins (ties: the
    smaller weight, then the weaker decay). With it fixed, the text-similarity (weight in ``text_grid``, decay
    in ``decays``) pair is chosen the same way, then with both fixed the next-item weight (in ``next_grid``);
    a grid of ``(0.0,)`` keeps that term off. The popularity weight (in ``cold_grid``) is chosen on the sample's
    rows whose history has events, none of them in the domain (the only rows it changes, and rows the other
    terms leave alone). With fewer than ``min_cold_rows`` of them (a data set where every user has history in
    every domain, or the test's cold-start users are the only new ones), it is chosen on up to
    ``simulated_cold_rows`` of the sample's rows whose history also has events in other domains, scored from
    those events only, as a user new to the domain is; with fewer than ``min_cold_rows`` of those too it stays
    0. On the same rows, with the popularity weight fixed, the cross-domain text term's (weight in
    ``cold_text_grid``, decay in ``decays``) pair is chosen (when the model has a frozen text table).
    Returns ``{domain: {"weight": w,
    "decay": r, "rows": n, "valid_ndcg@10": [{"weight", "decay", "value"} per pair tried], "text_similarity":
    {"weight": t, "decay": r_t, "valid_ndcg@10": [{"weight", "decay", "value"} per pair tried]}, "next_item":
    {"weight": m, "valid_ndcg@10": [{"weight", "value"} per weight tried]}, "cold_popularity": {"weight": p,
    "rows": n_cold, "simulated": bool, "valid_ndcg@10": [{"weight", "value"} per weight tried]},
    "cold_text_similarity": {"weight": x, "decay": r_x, "valid_ndcg@10": [{"weight", "decay", "value"} per pair
    tried]}}}`` for the artifact's metrics.
    """
    import torch

    from crossrec.evaluate.metrics import candidate_counts, rank_of_target, ranking_metrics
    from crossrec.evaluate.protocol import history_batch

    assert len(grid) >= 1 and all(w >= 0 for w in grid), f"grid must hold weights >= 0, got {grid}"
    assert len(decays) >= 1 and all(0 < r <= 1 for r in decays), f"decays must lie in (0, 1], got {decays}"
    assert len(cold_grid) >= 1 and all(p >= 0 for p in cold_grid), f"cold_grid must hold weights >= 0, got {cold_grid}"
    assert len(text_grid) >= 1 and all(t >= 0 for t in text_grid), f"text_grid must hold weights >= 0, got {text_grid}"
    assert len(next_grid) >= 1 and all(m >= 0 for m in next_grid), f"next_grid must hold weights >= 0, got {next_grid}"
    assert len(cold_text_grid) >= 1 and all(x >= 0 for x in cold_text_grid), \
        f"cold_text_grid must hold weights >= 0, got {cold_text_grid}"
    t0 = time.time()
    model.eval()
    device = model.domain_offsets.device
    n_domains = model.config.n_domains
    model.set_cooccurrence(*same_domain_similarity(valid.train, k, shrink), torch.zeros(n_domains),
                           popularity=popularity_feature(valid.train))
    model.set_transitions(*next_item_transitions(valid.train), torch.zeros(n_domains))
    if model.can_text_similarity:
        model.set_text_similarity(torch.zeros(n_domains))  # off until chosen (an artifact may carry an older one)
    keep = None if input_domains is None else np.array([valid.domains.index(d) for d in input_domains], dtype=np.int64)
    rng = np.random.default_rng(seed)
    report: dict[str, dict] = {}
    weights, decay_of, cold_of = torch.zeros(n_domains), torch.ones(n_domains), torch.zeros(n_domains)
    text_of, text_decay_of, next_of = torch.zeros(n_domains), torch.ones(n_domains), torch.zeros(n_domains)
    cold_text_of, cold_text_decay_of = torch.zeros(n_domains), torch.ones(n_domains)
    combos = [(w, r) for w in grid for r in (decays if w > 0 else (1.0,))]  # weight 0: the decay does not matter
    with_text = model.can_text_similarity and any(t > 0 for t in text_grid)
    text_combos = [(t, r) for t in text_grid for r in (decays if t > 0 else (1.0,))]
    with_cold_text = model.can_text_similarity and any(x > 0 for x in cold_text_grid)
    cold_text_combos = [(x, r) for x in cold_text_grid for r in (decays if x > 0 else (1.0,))]
    if not model.can_text_similarity:
        log.info("text-similarity term: off (the model has no frozen text table: --no-text or a fine-tuned encoder)")
    for dt_ in valid.tests:
        if len(dt_.rows) == 0 or (input_domains is not None and dt_.domain not in input_domains):
            continue
        sel = np.arange(len(dt_.rows))
        if len(sel) > max_rows:
            sel = np.sort(rng.choice(sel, max_rows, replace=False))
        ranks = {c: [] for c in combos}
        cold_seen = []  # (rows, history, user vectors) of the rows with events, none in the domain
        seen = []  # (rows, history, user vectors) of each batch, for the text term's pass
        with torch.inference_mode():
            reps = model.domain_item_reps(dt_.domain_idx)
            cov = model.score_covariance(reps)
            for s in range(0, len(sel), 512):
                rows = sel[s : s + 512]
                batch = history_batch(valid, dt_.rows[rows], model.config.max_seq_len, device, keep)
                h = model.user_vectors(batch, dt_.domain_idx)
                seen.append((rows, batch["item_idx"], h))
                raw = h @ reps.T  # the Transformer alone
                pairs = model.cooccurrence_pairs(batch["item_idx"], dt_.domain_idx)  # once for every combination
                for w, r in combos:
                    scores = model.combine_scores(raw, batch["item_idx"], dt_.domain_idx, h, cov, weight=w, decay=r,
                                                  pairs=pairs, cold_weight=0.0, text_weight=0.0, next_weight=0.0)
                    ranks[(w, r)].append(rank_of_target(scores.float().cpu().numpy(), dt_.target_col[rows],
                                                        dt_.exclude[rows]))
                items = batch["item_idx"]
                in_d = ((items != 0) & (model.item_encoder.item_domain[items] == dt_.domain_idx)).any(1)
                cold = (items != 0).any(1) & ~in_d  # events, none in the domain
                if bool(cold.any()):
                    cold_seen.append((rows[cold.cpu().numpy()], items[cold], h[cold]))
        n_cand = candidate_counts(dt_.exclude.shape[1], dt_.target_col[sel], dt_.exclude[sel])
        ndcg = {c: float(ranking_metrics(np.concatenate(r), n_cand, ks=(10,))["ndcg@10"]) for c, r in ranks.items()}
        best_w, best_r = max(combos, key=lambda c: (ndcg[c], -c[0], c[1]))
        weights[dt_.domain_idx], decay_of[dt_.domain_idx] = best_w, best_r
        report[dt_.domain] = {"weight": best_w, "decay": best_r, "rows": int(len(sel)),
                              "valid_ndcg@10": [{"weight": w, "decay": r, "value": v} for (w, r), v in ndcg.items()]}
        log.info("co-occurrence term of %s: weight %g, decay %g (valid NDCG@10 %.4f; Transformer alone %.4f; "
                 "%d rows)", dt_.domain, best_w, best_r, ndcg[(best_w, best_r)], ndcg.get((0.0, 1.0), float("nan")),
                 len(sel))
        fixed = {"weight": best_w, "decay": best_r}
        text_ndcg = {}
        if with_text:
            units = model.domain_text_units(dt_.domain_idx)

            def text_kwargs(c, items, cache):  # one (B, n_d) similarity per decay and batch, shared by the weights
                if c[0] and c[1] not in cache:
                    cache[c[1]] = model.text_similarity_scores(items, dt_.domain_idx, c[1], units)
                return {"text_weight": c[0], "text_scores": cache.get(c[1])}

            text_ndcg = _ndcg_of_added_term(model, dt_, seen, reps, cov, fixed, text_combos, text_kwargs)
        best_t, best_tr = max(text_ndcg, key=lambda c: (text_ndcg[c], -c[0], c[1])) if text_ndcg else (0.0, 1.0)
        text_of[dt_.domain_idx], text_decay_of[dt_.domain_idx] = best_t, best_tr
        report[dt_.domain]["text_similarity"] = {
            "weight": best_t, "decay": best_tr,
            "valid_ndcg@10": [{"weight": t, "decay": r, "value": v} for (t, r), v in text_ndcg.items()]}
        if text_ndcg:
            log.info("text-similarity term of %s: weight %g, decay %g (valid NDCG@10 %.4f; without %.4f)", dt_.domain,
                     best_t, best_tr, text_ndcg[(best_t, best_tr)], text_ndcg.get((0.0, 1.0), float("nan")))
        fixed |= {"text_weight": best_t, "text_decay": best_tr}
        next_ndcg = {}
        if any(m > 0 for m in next_grid):
            next_ndcg = {c[0]: v for c, v in _ndcg_of_added_term(model, dt_, seen, reps, cov, fixed,
                                                                 [(m,) for m in next_grid],
                                                                 lambda c, items, cache: {"next_weight": c[0]}).items()}
            next_of[dt_.domain_idx] = max(next_ndcg, key=lambda m: (next_ndcg[m], -m))
            log.info("next-item term of %s: weight %g (valid NDCG@10 %.4f; without %.4f)", dt_.domain,
                     float(next_of[dt_.domain_idx]), next_ndcg[float(next_of[dt_.domain_idx])],
                     next_ndcg.get(0.0, float("nan")))
        report[dt_.domain]["next_item"] = {
            "weight": float(next_of[dt_.domain_idx]),
            "valid_ndcg@10": [{"weight": m, "value": v} for m, v in next_ndcg.items()]}
        del seen
        n_cold, simulated = int(sum(len(c[0]) for c in cold_seen)), False
        if n_cold < min_cold_rows:  # too few: users active in the domain, scored from their other domains only
            cold_seen = _simulated_cold_batches(model, valid, dt_, sel, keep, simulated_cold_rows, rng, device)
            n_cold, simulated = int(sum(len(c[0]) for c in cold_seen)), True
        cold_kind = "users active in it, their events there dropped" if simulated else "users new to it"
        cold_ndcg, p_best, xtext_ndcg, x_best = {}, 0.0, {}, (0.0, 1.0)
        if n_cold >= max(min_cold_rows, 1):  # no history in the domain: the other terms add nothing to these rows
            cold_ndcg = {c[0]: v for c, v in _ndcg_of_added_term(model, dt_, cold_seen, reps, cov, {},
                                                                 [(p,) for p in cold_grid],
                                                                 lambda c, items, cache: {"cold_weight": c[0]}).items()}
            p_best = max(cold_ndcg, key=lambda p: (cold_ndcg[p], -p))
            if with_cold_text:
                units = model.domain_text_units(dt_.domain_idx)

                def cold_text_kwargs(c, items, cache):  # one (B, n_d) similarity per decay and batch
                    if c[0] and c[1] not in cache:
                        cache[c[1]] = model.cold_text_scores(items, dt_.domain_idx, c[1], units)
                    return {"cold_text_weight": c[0], "cold_text_scores": cache.get(c[1])}

                xtext_ndcg = _ndcg_of_added_term(model, dt_, cold_seen, reps, cov, {"cold_weight": p_best},
                                                 cold_text_combos, cold_text_kwargs)
                x_best = max(xtext_ndcg, key=lambda c: (xtext_ndcg[c], -c[0], c[1]))
        del cold_seen
        cold_of[dt_.domain_idx] = p_best
        cold_text_of[dt_.domain_idx], cold_text_decay_of[dt_.domain_idx] = x_best
        report[dt_.domain]["cold_popularity"] = {
            "weight": p_best, "rows": n_cold, "simulated": simulated,
            "valid_ndcg@10": [{"weight": p, "value": v} for p, v in cold_ndcg.items()]}
        report[dt_.domain]["cold_text_similarity"] = {
            "weight": x_best[0], "decay": x_best[1],
            "valid_ndcg@10": [{"weight": x, "decay": r, "value": v} for (x, r), v in xtext_ndcg.items()]}
        if cold_ndcg:
            log.info("popularity term of %s for users new to it: weight %g (valid NDCG@10 %.4f; without %.4f; %d rows "
                     "of %s)", dt_.domain, p_best, cold_ndcg[p_best], cold_ndcg.get(0.0, float("nan")), n_cold,
                     cold_kind)
        else:
            log.info("popularity term of %s for users new to it: off (%d validation rows of %s, under %d)",
                     dt_.domain, n_cold, cold_kind, min_cold_rows)
        if xtext_ndcg:
            log.info("cross-domain text term of %s for users new to it: weight %g, decay %g (valid NDCG@10 %.4f; "
                     "without %.4f)", dt_.domain, *x_best, xtext_ndcg[x_best], xtext_ndcg.get((0.0, 1.0), float("nan")))
    model.cooc_weight.copy_(weights.to(model.cooc_weight.device))
    model.cooc_decay.copy_(decay_of.to(model.cooc_decay.device))
    model.cooc_cold_weight.copy_(cold_of.to(model.cooc_cold_weight.device))
    if model.can_text_similarity:
        model.set_text_similarity(text_of, text_decay_of, cold_text_of, cold_text_decay_of)
    model.trans_weight.copy_(next_of.to(model.trans_weight.device))
    log.info("score terms fitted in %.1fs", time.time() - t0)
    return report


def _simulated_cold_batches(model, valid, dt_, sel: np.ndarray, keep: np.ndarray | None, max_rows: int,
                            rng: np.random.Generator, device) -> list[tuple]:
    """Up to ``max_rows`` (seeded) of the sampled rows ``sel`` of ``dt_`` whose history has events in the model's
    other input domains, read from those events only: users active in the domain, seen as the cold-start test
    sees a user new to it (their history there removed). Returns ``[(rows, history, user vectors)]`` per batch,
    shaped as the natural cold rows' are."""
    import torch

    from crossrec.evaluate.protocol import history_batch

    n_domains = model.config.n_domains
    others = np.array([d for d in (range(n_domains) if keep is None else keep) if d != dt_.domain_idx], dtype=np.int64)
    if len(others) == 0:
        return []
    item_domain = valid.train.item_domain
    ok = sel[[bool(np.isin(item_domain[valid.histories[dt_.rows[k]]], others).any()) for k in sel]]
    if len(ok) > max_rows:
        ok = np.sort(rng.choice(ok, max_rows, replace=False))
    out = []
    with torch.inference_mode():
        for s in range(0, len(ok), 512):
            rows = ok[s : s + 512]
            batch = history_batch(valid, dt_.rows[rows], model.config.max_seq_len, device, others)
            out.append((rows, batch["item_idx"], model.user_vectors(batch, dt_.domain_idx)))
    return out


def _ndcg_of_added_term(model, dt_, seen, reps, cov, fixed: dict, combos: Sequence[tuple],
                        term_kwargs) -> dict[tuple, float]:
    """Validation NDCG@10 of each term setting in ``combos`` added on top of the terms ``fixed`` (keyword
    arguments of ``combine_scores``: the ones chosen before, in combine_scores' order) over the batches ``seen``
    (rows, item_idx, user vectors) of ``dt_``. ``term_kwargs(combo, item_idx, cache) -> dict``: the
    combine_scores arguments of one setting (``cache``: a dict per batch for what several settings share)."""
    import torch

    from crossrec.evaluate.metrics import candidate_counts, rank_of_target, ranking_metrics

    ranks: dict[tuple, list] = {c: [] for c in combos}
    off = {"weight": 0.0, "cold_weight": 0.0, "text_weight": 0.0, "next_weight": 0.0, "cold_text_weight": 0.0}
    with torch.inference_mode():
        for rows, item_idx, h in seen:
            base = model.combine_scores(h @ reps.T, item_idx, dt_.domain_idx, h, cov, **(off | fixed))
            cache: dict = {}
            for c in combos:
                scores = model.combine_scores(base, item_idx, dt_.domain_idx, h, cov, **(off | term_kwargs(c, item_idx, cache)))
                ranks[c].append(rank_of_target(scores.float().cpu().numpy(), dt_.target_col[rows], dt_.exclude[rows]))
    sel = np.concatenate([rows for rows, _, _ in seen])
    n_cand = candidate_counts(dt_.exclude.shape[1], dt_.target_col[sel], dt_.exclude[sel])
    return {c: float(ranking_metrics(np.concatenate(r), n_cand, ks=(10,))["ndcg@10"]) for c, r in ranks.items()}


__all__ = ["same_domain_similarity", "popularity_feature", "fit_cooccurrence", "WEIGHT_GRID", "DECAY_GRID",
           "COLD_POPULARITY_GRID", "MIN_COLD_ROWS", "SIMULATED_COLD_ROWS", "TEXT_WEIGHT_GRID", "NEXT_WEIGHT_GRID", "next_item_transitions"]
