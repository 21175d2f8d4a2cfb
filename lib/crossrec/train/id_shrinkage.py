"""Id shrinkage: the id embedding of an item with few training events is scaled toward zero, by how much chosen on
the validation split.

Under the softmax (full or sampled) an item is a negative in nearly every step and a positive only at its own
events, so the id vector of an item with one or two events is pushed away from users far more often than toward them:
it drowns what the item's text, vectors and entities say, and a new release that entered the catalog days ago is
ranked below everything. Zeroing the ids of items with no training event at all
(:meth:`~crossrec.model.transformer.CrossDomainTransformer.clear_id_embeddings`) is the limit case. Here each id
vector is scaled by ``n / (n + k)``, ``n`` the item's training events: ``k = 0`` keeps every trained id as learnt, a
larger ``k`` trusts an id only as its events accumulate and lets the content speak for the rest.

``k`` is chosen from :data:`GRID` with the model that has not learnt the validation targets, on a seeded sample of
each domain's validation rows. As for the score terms (:mod:`crossrec.rerank.fit`), a ``k`` counts only when it beats
``k = 0`` by ``min_gain_se`` paired standard errors of the per-row NDCG@10; of those, the smallest whose NDCG@10 is
within one paired standard error of the best one's wins (the one-standard-error rule: a larger ``k`` moves further
from the model as trained, and on generated data the best ``k`` on validation was past the best on test). The item
table is encoded once; each ``k`` only rescales the ids before the LayerNorm.

The items without any training event get the bias of an item of their domain
(:meth:`~crossrec.model.transformer.CrossDomainTransformer.clear_id_embeddings`): which one, a quantile of the
domain's trained biases from :data:`COLD_BIAS_GRID`, is chosen per domain after ``k`` (:func:`choose_cold_bias`) by the
same rules, the median in the place of ``k = 0``. Where those items are the long tail nobody chose, a low bias wins;
where they are new releases that users turn to, a high one.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from crossrec.evaluate.metrics import candidate_counts, paired_difference, per_row_metrics, rank_of_target
from crossrec.inference import Predictor

if TYPE_CHECKING:
    from crossrec.evaluate.protocol import EvalData
    from crossrec.model.transformer import CrossDomainTransformer

log = logging.getLogger(__name__)

GRID: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
MAX_ROWS = 20000  # validation rows sampled per domain (seeded), as the score terms' fit
COLD_BIAS_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)  # quantiles of the domain's trained items' biases
COLD_BIAS_DEFAULT = 0.5  # the median: what a setting must beat
MIN_GAIN_SE = 1.0  # a k must beat k = 0 by this many paired standard errors
BATCH_ROWS = 512


def shrink_factors(counts: Tensor | np.ndarray, k: float) -> Tensor:
    """(n_items+1,) ``n / (n + k)`` of each item's training events ``n``; at ``k = 0``, 1 for every item with events.
    0 for an item without any, whatever ``k``."""
    assert k >= 0, f"k must be >= 0, got {k}"
    n = torch.as_tensor(counts, dtype=torch.float32)
    return (n > 0).float() if k == 0 else n / (n + k)


@torch.no_grad()
def shrink_id_embeddings(model: "CrossDomainTransformer", counts: Tensor | np.ndarray, k: float) -> None:
    """Scale ``model``'s id embeddings in place by :func:`shrink_factors` (``counts``: (n_items+1,) training events
    per item id). No-op without id embeddings or at ``k = 0``."""
    emb = model.item_encoder.id_emb
    if emb is None or k == 0:
        return
    f = shrink_factors(counts, k)
    assert f.shape == (emb.weight.shape[0],), f"counts must have n_items + 1 = {emb.weight.shape[0]} entries, got {tuple(f.shape)}"
    emb.weight.mul_(f.to(emb.weight)[:, None])


def choose_id_shrinkage(model: "CrossDomainTransformer", valid: "EvalData", grid: Sequence[float] = GRID, *,
                        max_rows: int = MAX_ROWS, seed: int = 0, min_gain_se: float = MIN_GAIN_SE,
                        input_domains: Sequence[str] | None = None) -> dict:
    """Choose ``k`` for ``model`` (trained on ``valid.train``'s events, not on the validation targets) and apply it to
    ``model`` in place; returns the report ``{"k", "rows", "valid_ndcg@10": [{"k", "value", "gain_se", "below_best",
    "below_best_se"} per k tried]}``
    (``"skipped"`` instead of the list when there is nothing to choose: no id embeddings, a one-point grid, no rows;
    ``below_best``, ``below_best_se``: the paired difference with the best ``k`` that counts, and its error).

    ``input_domains``: the model reads only these domains' events and predicts only in them (None = every domain)."""
    t0 = time.time()
    grid = sorted({float(k) for k in grid} | {0.0})
    report: dict = {"k": 0.0, "rows": 0}
    encoder = model.item_encoder
    if encoder.id_emb is None or len(grid) == 1:
        report["skipped"] = "no id embeddings" if encoder.id_emb is None else "one k in the grid"
        return report
    counts = torch.from_numpy(np.bincount(valid.train.item, minlength=model.config.n_items + 1))
    model.eval()
    with torch.inference_mode():
        content, ids = encoder.parts(torch.arange(model.config.n_items + 1, device=encoder.item_domain.device))
    sample = _validation_sample(valid, max_rows, seed, input_domains, report)
    if sample is None:
        return report
    keep, samples, popularity = sample
    per_k = []
    for k in grid:
        f = shrink_factors(counts, k).to(ids)
        with torch.inference_mode():
            table = encoder.ln(content + f[:, None] * ids)
        predictor = Predictor(model, None, popularity, item_table=table)
        per_k.append(np.concatenate([_ndcg(predictor, valid, dt_, sel, keep) for dt_, sel in samples]))
        log.info("id shrinkage: k=%g, valid NDCG@10 %.4f (%d of %d settings, %.0fs)", k, per_k[-1].mean(), len(per_k),
                 len(grid), time.time() - t0)
    best, tried = _one_se_choice(grid, per_k, 0, min_gain_se, "k")
    report.update({"k": grid[best], "valid_ndcg@10": tried})
    shrink_id_embeddings(model, counts, grid[best])
    log.info("id shrinkage: k=%g chosen on %d validation rows in %.1fs (%s)", grid[best], report["rows"],
             time.time() - t0, ", ".join(f"k={t['k']:g}: {t['value']:.4f}" for t in tried))
    return report


def _validation_sample(valid: "EvalData", max_rows: int, seed: int, input_domains: Sequence[str] | None,
                       report: dict) -> tuple[np.ndarray | None, list, np.ndarray] | None:
    """(the domain_idx the model reads, None = all; the seeded sample of each domain's validation rows, as
    :meth:`~crossrec.evaluate.protocol.EvalData.sampled` yields them; the training popularity), with ``report["rows"]``
    set; None, with ``report["skipped"]``, when there is no row."""
    keep = None if input_domains is None else np.array([valid.domains.index(d) for d in input_domains], dtype=np.int64)
    samples = list(valid.sampled(max_rows, np.random.default_rng(seed), input_domains))
    report["rows"] = int(sum(len(sel) for _, sel in samples))
    if report["rows"] == 0:
        report["skipped"] = "no validation rows"
        return None
    return keep, samples, valid.item_counts()


def _one_se_choice(grid: Sequence[float], per_setting: list[np.ndarray], default: int, min_gain_se: float,
                   name: str) -> tuple[int, list[dict]]:
    """The rules of the module docstring over per-row NDCG@10 values of each setting of ``grid``: a setting counts when
    it beats ``grid[default]`` by ``min_gain_se`` paired standard errors; of those, the one nearest to the default
    whose NDCG@10 is within one paired standard error of the best one's wins. Returns (its index, the report rows)."""
    tried, counted = [], []
    for i, (x, values) in enumerate(zip(grid, per_setting)):
        gain, se = paired_difference(values, per_setting[default])
        tried.append({name: x, "value": float(values.mean()), "gain_se": se})
        counted.append(i == default or gain > 0 and gain >= min_gain_se * (se if se == se else float("inf")))
    top = max((i for i in range(len(grid)) if counted[i]), key=lambda i: (tried[i]["value"], -abs(i - default)))
    for i, t in enumerate(tried):
        short, se = paired_difference(per_setting[top], per_setting[i])
        t["below_best"], t["below_best_se"] = short, se
    near = [i for i in range(len(grid)) if counted[i] and tried[i]["below_best"] <= tried[i]["below_best_se"]]
    return min(near, key=lambda i: (abs(i - default), i)), tried


def choose_cold_bias(model: "CrossDomainTransformer", valid: "EvalData", untrained: np.ndarray,
                     grid: Sequence[float] = COLD_BIAS_GRID, *, max_rows: int = MAX_ROWS, seed: int = 0,
                     min_gain_se: float = MIN_GAIN_SE, input_domains: Sequence[str] | None = None) -> dict:
    """Choose per domain the quantile of its trained items' biases that its ``untrained`` items (ids, without training
    events) get, for ``model`` (trained on ``valid.train``'s events, its ids already cleared), and apply it to ``model``
    in place; returns the report ``{"quantile": [q per domain_idx], "by_domain": {domain: q}, "rows",
    "valid_ndcg@10": {domain: [{"quantile", "value", "gain_se", "below_best", "below_best_se"} per quantile]}}``
    (``"skipped"`` when there is nothing to choose: no biases, no untrained item, no rows; the median then)."""
    t0 = time.time()
    grid = sorted({float(q) for q in grid} | {COLD_BIAS_DEFAULT})
    default = grid.index(COLD_BIAS_DEFAULT)
    n_domains = model.config.n_domains
    report: dict = {"quantile": [COLD_BIAS_DEFAULT] * n_domains, "rows": 0}
    untrained = torch.as_tensor(np.asarray(untrained, dtype=np.int64))
    untrained = untrained[untrained != 0]
    if model.item_bias is None or untrained.numel() == 0 or len(grid) == 1:
        report["skipped"] = ("no item biases" if model.item_bias is None else
                             "no item without training events" if untrained.numel() == 0 else "one quantile in the grid")
        return report
    sample = _validation_sample(valid, max_rows, seed, input_domains, report)
    if sample is None:
        return report
    keep, samples, popularity = sample
    per_q: dict[int, list[np.ndarray]] = {dt_.domain_idx: [] for dt_, _ in samples}
    model.eval()
    with torch.inference_mode():
        table = model.item_table()  # the quantiles move biases only: the items are encoded once
    for q in grid:
        model.clear_id_embeddings(untrained, bias_quantile=q)
        predictor = Predictor(model, None, popularity, item_table=table)
        for dt_, sel in samples:
            per_q[dt_.domain_idx].append(_ndcg(predictor, valid, dt_, sel, keep))
    chosen, report["by_domain"], report["valid_ndcg@10"] = list(report["quantile"]), {}, {}
    for dt_, _ in samples:
        best, tried = _one_se_choice(grid, per_q[dt_.domain_idx], default, min_gain_se, "quantile")
        chosen[dt_.domain_idx] = report["by_domain"][dt_.domain] = grid[best]
        report["valid_ndcg@10"][dt_.domain] = tried
        log.info("cold bias: %s: quantile %g chosen (%s)", dt_.domain, grid[best],
                 ", ".join(f"{t['quantile']:g}: {t['value']:.4f}" for t in tried))
    model.clear_id_embeddings(untrained, bias_quantile=chosen)
    report["quantile"] = chosen
    log.info("cold bias of %d item(s) without training events chosen on %d validation rows in %.1fs", untrained.numel(),
             report["rows"], time.time() - t0)
    return report


def _ndcg(predictor: Predictor, valid: "EvalData", dt_, sel: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """Per row of the sample ``sel`` of the domain test ``dt_``: the validation NDCG@10 of the Transformer alone."""
    d = dt_.domain_idx
    ranks = []
    for s in range(0, len(sel), BATCH_ROWS):
        part = sel[s : s + BATCH_ROWS]
        rows = dt_.rows[part]
        batch = predictor.collate([valid.histories[r] for r in rows], [valid.history_ts[r] for r in rows], keep)
        scores = predictor.finalize(batch, d, predictor.model_scores(batch, d)[0])
        ranks.append(rank_of_target(scores.float().cpu().numpy(), dt_.target_col[part], dt_.exclude[part]))
    n_cand = candidate_counts(dt_.exclude.shape[1], dt_.target_col[sel], dt_.exclude[sel])
    return per_row_metrics(np.concatenate(ranks), n_cand, ks=(10,))["ndcg@10"]


__all__ = ["GRID", "COLD_BIAS_GRID", "shrink_factors", "shrink_id_embeddings", "choose_id_shrinkage", "choose_cold_bias"]
