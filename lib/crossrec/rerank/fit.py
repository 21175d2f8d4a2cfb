"""fit_terms: the one validation search that chooses the parameters of every score term, per domain.

For each term (in its ``order``) and each domain, every setting of the term's grid (:meth:`ScoreTerm.settings`) is
added to the Transformer's scores plus the terms chosen before it, on a seeded sample of the domain's validation rows
of the term's kind. A setting counts only when it beats the term switched off by at least ``min_gain_se`` standard
errors of the per-row NDCG@10 difference (the rows are the same, so the paired error): the best of a grid on a few
dozen rows is often noise, and such a weight chosen on validation loses on test. Of the settings that count, the best
NDCG@10 wins (ties: the smaller weight, then the parameters nearer their neutral values, e.g. the weaker decay); when
none counts the term stays off there:

* warm terms are chosen on the sampled rows whose history (the model's input window) has events of the domain;
* cold terms on the sampled rows whose history has events, none of them in the domain (users new to it). With fewer
  than ``enough_cold_rows`` of those (a data set where every user has history in every domain, or whose only new
  users are the test's cold-start sample; a few dozen rows cannot tell a real gain from noise), also on up to
  ``simulated_cold_rows`` of the sampled rows whose history also has events in other domains, read from those
  events only: how the cold-start test sees a user whose history in the domain was removed. With fewer than
  ``min_cold_rows`` rows in all, the cold terms stay off there.

The terms are fitted on the training events only (the split the model learned from), so the validation targets that
choose their parameters were never seen by them. Scoring and ranking go through the one inference path
(:class:`crossrec.inference.Predictor`): the model's scores once per batch, each term's values once per batch and
setting of its non-weight parameters (weights are linear). Then the terms' state is refitted on the training events
plus the validation targets (``refit``): the events every other model learns from at test time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from crossrec.evaluate.metrics import candidate_counts, paired_difference, per_row_metrics, rank_of_target
from crossrec.inference import Batch, Predictor
from crossrec.rerank.base import Catalog, ScoreTerm, TermSet, add_term, registered, score_std, stand_ins, term_rows

if TYPE_CHECKING:
    from crossrec.evaluate.protocol import DomainTest, EvalData
    from crossrec.model.baselines import InteractionData
    from crossrec.model.transformer import CrossDomainTransformer

log = logging.getLogger(__name__)

MAX_ROWS = 20000  # validation rows sampled per domain (seeded)
MIN_COLD_ROWS = 50  # fewer validation rows for a domain's cold terms (new users and simulated ones): they stay off
ENOUGH_COLD_ROWS = 500  # fewer validation rows of users new to a domain: simulated ones are added
SIMULATED_COLD_ROWS = 5000  # at most this many (seeded) sampled rows scored as if new to the domain
BATCH_ROWS = 512  # validation rows per model batch
MIN_GAIN_SE = 1.0  # a setting must beat the term switched off by this many paired standard errors


@dataclass
class _Rows:
    """Validation rows of one domain (positions within its DomainTest) that terms of one kind are chosen on."""

    rows: np.ndarray
    batches: list[tuple[np.ndarray, Batch]]  # (positions, collated batch) per model batch
    simulated: int = 0  # how many of the rows are simulated users new to the domain


def fit_terms(model: "CrossDomainTransformer", valid: "EvalData", names: Sequence[str] | None = None, *,
              options: Mapping[str, Mapping] | None = None, grids: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
              max_rows: int = MAX_ROWS, seed: int = 0, input_domains: Sequence[str] | None = None,
              min_cold_rows: int = MIN_COLD_ROWS, enough_cold_rows: int = ENOUGH_COLD_ROWS,
              simulated_cold_rows: int = SIMULATED_COLD_ROWS, min_gain_se: float = MIN_GAIN_SE,
              refit: bool = True) -> tuple[TermSet, dict]:
    """Fit the score terms ``names`` (default: every registered term) for ``model`` and choose their parameters per
    domain on the validation split (see the module docstring).

    Args:
        valid: :func:`crossrec.evaluate.protocol.load_eval_data` with ``split="valid"`` (its ``train`` holds the
            training events only).
        options: constructor keyword arguments per term name (e.g. ``{"cooccurrence": {"k": 50}}``).
        grids: grids replacing a term's own, per term name (e.g. ``{"next_item": {"weight": (0.0,)}}``: off).
        max_rows, seed: the seeded sample of validation rows per domain.
        input_domains: the model reads only these domains' events and predicts only in them (None = every domain).
        min_cold_rows, enough_cold_rows, simulated_cold_rows, min_gain_se: see the module docstring.
        refit: refit the terms' state on the training events plus the validation targets for the artifact.

    Returns:
        The :class:`TermSet` (every term that can score this model, with weight 0 where it was not chosen) and the
        report ``{"fitted_on", "min_gain_se", "stand_ins", "terms": {name: {"options", "applies_to", "domains": {domain:
        {"params", "rows", "simulated", "valid_ndcg@10": [{<params>, "value", "gain_se"} per setting tried]}}}}}``
        (``stand_ins``: the items without training events, whose collaborative values are a stand-in's, see
        :mod:`crossrec.rerank.base`; ``simulated``: how many of the rows are simulated new users; ``gain_se``: the
        paired standard error of the
        setting's difference with the term off); a term left out has
        ``"skipped"`` instead of ``"domains"``, a domain not searched ``"skipped"`` and an empty list.
    """
    t0 = time.time()
    kinds = registered()
    names = list(kinds) if names is None else list(names)
    unknown = sorted(set(names) - set(kinds))
    assert not unknown, f"unknown score term(s) {unknown}; registered: {sorted(kinds)}"
    assert not set(options or {}) - set(names) and not set(grids or {}) - set(names), "options / grids of terms not fitted"
    catalog = Catalog.from_model(model)
    report: dict = {"fitted_on": "train events + valid targets" if refit else "train events", "min_gain_se": min_gain_se,
                    "terms": {}}
    terms: list[ScoreTerm] = []
    for term in sorted((kinds[n](**(options or {}).get(n, {})) for n in names), key=lambda t: (t.order, t.name)):
        entry = report["terms"][term.name] = {"options": term.options(), "applies_to": term.applies_to}
        reason = term.unusable(catalog)
        if reason is not None:
            entry["skipped"] = reason
            log.info("%s term: off (%s)", term.name, reason)
            continue
        entry["domains"] = {}
        term.fit(valid.train, catalog)
        terms.append(term)

    predictor = Predictor(model, None, valid.item_counts())

    def stand_in_of(events: "InteractionData") -> Tensor:
        counts = torch.from_numpy(np.bincount(events.item, minlength=catalog.n_items + 1))
        return stand_ins(predictor.item_table, catalog, counts)

    stand_in = stand_in_of(valid.train)
    keep = None if input_domains is None else np.array([valid.domains.index(d) for d in input_domains], dtype=np.int64)
    rng = np.random.default_rng(seed)
    params: dict[str, dict[int, dict[str, float]]] = {t.name: {} for t in terms}
    stand_in_weight: dict[int, float] = {}
    report["stand_in"] = {"domains": {}}
    for dt_, sel in valid.sampled(max_rows, rng, input_domains):
        groups: dict[str, _Rows] = {}
        for term in terms:
            if term.applies_to not in groups:  # simulated cold rows draw from rng: after this domain's sample
                groups[term.applies_to] = _rows_of_kind(predictor, valid, dt_, sel, keep, term.applies_to, rng,
                                                        enough_cold_rows, simulated_cold_rows)
            group = groups[term.applies_to]
            settings = term.settings((grids or {}).get(term.name))
            record = {"params": term.off(), "rows": int(len(group.rows)), "simulated": int(group.simulated),
                      "valid_ndcg@10": []}
            needed = max(min_cold_rows, 1) if term.applies_to == "cold" else 1
            if not any(s["weight"] > 0 for s in settings):
                record["skipped"] = "no weight above 0 in its grid"
            elif len(group.rows) < needed:
                record["skipped"] = f"too few validation rows to choose it, under {needed}"
            else:
                chosen = TermSet(terms, params, valid.domains)  # the stand-ins' weight is chosen after the terms
                per_row = _ndcg_of_settings(predictor, dt_, group, chosen, term, settings)
                best, record["valid_ndcg@10"] = _choose(settings, per_row, min_gain_se, term.preference)
                record["params"] = settings[best] if best is not None else term.off()
            params[term.name][dt_.domain_idx] = record["params"]
            report["terms"][term.name]["domains"][dt_.domain] = record
            log.info("%s", term_line(term.name, dt_.domain, record))
        record = _stand_in_record(predictor, dt_, sel, lambda: _batched(predictor, valid, dt_, sel, keep),
                                  TermSet(terms, params, valid.domains, stand_in=stand_in), min_gain_se)
        stand_in_weight[dt_.domain_idx] = record["params"]["weight"]
        report["stand_in"]["domains"][dt_.domain] = record
        log.info("%s", term_line("stand_in", dt_.domain, record))
    if refit:
        known = valid.train_with_targets()  # train events + valid targets
        for term in terms:
            term.fit(known, catalog)
        stand_in = stand_in_of(known)
    report["stand_in"]["items"] = int((stand_in != torch.arange(stand_in.numel(), device=stand_in.device)).sum())
    log.info("score terms %s fitted in %.1fs; %d items without training events have a stand-in",
             [t.name for t in terms], time.time() - t0, report["stand_in"]["items"])
    return TermSet(terms, params, valid.domains, report, stand_in, stand_in_weight), report


def _choose(settings: list[dict[str, float]], per_row: list[np.ndarray], min_gain_se: float,
            preference) -> tuple[int | None, list[dict]]:
    """The index of the setting to keep (None: none beats weight 0 by ``min_gain_se`` paired standard errors) and the
    report of every setting tried: ``{<setting>, "value", "gain_se"}``; ``preference`` breaks ties (larger wins)."""
    off = next((per_row[i] for i, x in enumerate(settings) if x["weight"] == 0.0), None)
    tried, counts = [], []
    for x, values in zip(settings, per_row):
        gain, se = paired_difference(values, off) if off is not None else (float("inf"), 0.0)
        tried.append({**x, "value": float(values.mean()), "gain_se": se})
        counts.append(x["weight"] == 0.0 or gain > 0 and gain >= min_gain_se * (se if se == se else float("inf")))
    best = max((i for i in range(len(settings)) if counts[i]), default=None,
               key=lambda i: (tried[i]["value"], *preference(settings[i])))
    return best, tried


STAND_IN_GRID: tuple[float, ...] = (0.0, 0.5, 1.0)


def _stand_in_record(predictor: Predictor, dt_: "DomainTest", sel: np.ndarray, batched: Callable[[], _Rows],
                     chosen: TermSet, min_gain_se: float) -> dict:
    """Choose the domain's stand-in weight ``b_d`` from :data:`STAND_IN_GRID` on its sampled validation rows ``sel``
    (``batched()`` collates them, only when there is a choice to make), with its terms as chosen (see
    :mod:`crossrec.rerank.base`); a record like a term's."""
    d = dt_.domain_idx
    settings = [{"weight": b} for b in STAND_IN_GRID]
    record = {"params": {"weight": 0.0}, "rows": int(len(sel)), "valid_ndcg@10": []}
    active = any(t.collaborative for t, _ in chosen.active(d))
    if not active or chosen.stand_in_columns(chosen.terms[0].catalog, d) is None:
        record["skipped"] = "no collaborative term on" if not active else "every item has training events"
        return record
    group = batched()
    cov = predictor.covariance(d)
    ranks: list[list[np.ndarray]] = [[] for _ in settings]
    for rows, batch in group.batches:
        raw, h = predictor.model_scores(batch, d)
        for i, x in enumerate(settings):
            ts = TermSet(chosen.terms, chosen.params, chosen.domains, stand_in=chosen.stand_in,
                         stand_in_weight={d: x["weight"]})
            scores = predictor.finalize(batch, d, ts.apply(raw, batch.inputs["item_idx"], d, h, cov))
            ranks[i].append(rank_of_target(scores.float().cpu().numpy(), dt_.target_col[rows], dt_.exclude[rows]))
    n_cand = candidate_counts(dt_.exclude.shape[1], dt_.target_col[group.rows], dt_.exclude[group.rows])
    per_row = [per_row_metrics(np.concatenate(r), n_cand, ks=(10,))["ndcg@10"] for r in ranks]
    best, record["valid_ndcg@10"] = _choose(settings, per_row, min_gain_se, lambda x: (-x["weight"],))
    record["params"] = settings[best] if best is not None else {"weight": 0.0}
    return record


def _rows_of_kind(predictor: Predictor, valid: "EvalData", dt_: "DomainTest", sel: np.ndarray, keep: np.ndarray | None,
                  kind: str, rng: np.random.Generator, enough_cold_rows: int, simulated_cold_rows: int) -> _Rows:
    """The rows of the sample ``sel`` of ``dt_`` that terms of ``kind`` are chosen on, batched (see the module
    docstring). The model's input window decides whether a row has history in the domain, as the terms see it."""
    max_len = predictor.model.config.max_seq_len
    item_domain = valid.train.item_domain
    windows = [item_domain[_kept(valid.histories[dt_.rows[k]], item_domain, keep)[-max_len:]] for k in sel]
    in_d = np.array([bool((w == dt_.domain_idx).any()) for w in windows], dtype=bool)
    if kind == "warm":
        return _batched(predictor, valid, dt_, sel[in_d], keep)
    has = np.array([len(w) > 0 for w in windows], dtype=bool)
    natural = _batched(predictor, valid, dt_, sel[has & ~in_d], keep)
    domains = range(predictor.model.config.n_domains) if keep is None else keep
    others = np.array([d for d in domains if d != dt_.domain_idx], dtype=np.int64)
    if len(natural.rows) >= enough_cold_rows or len(others) == 0:
        return natural
    ok = sel[in_d & np.array([bool(np.isin(item_domain[valid.histories[dt_.rows[k]]], others).any()) for k in sel])]
    if len(ok) > simulated_cold_rows:
        ok = np.sort(rng.choice(ok, simulated_cold_rows, replace=False))
    simulated = _batched(predictor, valid, dt_, ok, others)
    return _Rows(np.concatenate([natural.rows, simulated.rows]), natural.batches + simulated.batches, len(ok))


def _kept(history: np.ndarray, item_domain: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    return history if keep is None else history[np.isin(item_domain[history], keep)]


def _batched(predictor: Predictor, valid: "EvalData", dt_: "DomainTest", rows: np.ndarray, keep: np.ndarray | None) -> _Rows:
    """``rows`` of ``dt_`` as model batches, read from the events of ``keep`` only (None = all)."""
    batches = []
    for s in range(0, len(rows), BATCH_ROWS):
        part = rows[s : s + BATCH_ROWS]
        test_rows = dt_.rows[part]
        batches.append((part, predictor.collate([valid.histories[r] for r in test_rows],
                                                [valid.history_ts[r] for r in test_rows], keep)))
    return _Rows(rows, batches)


def _ndcg_of_settings(predictor: Predictor, dt_: "DomainTest", group: _Rows, chosen: TermSet, term: ScoreTerm,
                      settings: list[dict[str, float]]) -> list[np.ndarray]:
    """Per row of ``group``, the validation NDCG@10 of each setting of ``term`` added on top of the terms ``chosen`` so
    far."""
    d = dt_.domain_idx
    cov = predictor.covariance(d)
    ranks: list[list[np.ndarray]] = [[] for _ in settings]
    for rows, batch in group.batches:
        raw, h = predictor.model_scores(batch, d)  # the Transformer, once per batch
        items = batch.inputs["item_idx"]
        base = chosen.apply(raw, items, d, h, cov)
        std = score_std(h, cov)
        sub = term_rows(items, term.catalog.item_domain, d, term.applies_to)
        values: dict[tuple, Tensor] = {}  # one (b, n_d) matrix per setting of the non-weight parameters
        for i, s in enumerate(settings):
            scores = base
            if s["weight"] != 0.0:
                key = tuple(s[p] for p in term.params)
                if key not in values:
                    values[key] = chosen.values(term, items if sub is None else items[sub], d, dict(zip(term.params, key)))
                scores = add_term(base, values[key], s["weight"] * (std if sub is None else std[sub]), sub)
            scores = predictor.finalize(batch, d, scores)
            ranks[i].append(rank_of_target(scores.float().cpu().numpy(), dt_.target_col[rows], dt_.exclude[rows]))
    n_cand = candidate_counts(dt_.exclude.shape[1], dt_.target_col[group.rows], dt_.exclude[group.rows])
    return [per_row_metrics(np.concatenate(r), n_cand, ks=(10,))["ndcg@10"] for r in ranks]


def term_line(name: str, domain: str, record: Mapping) -> str:
    """One line of a fit report: a term's choice in one domain and what validation said."""
    simulated = int(record.get("simulated") or 0)
    rows = f"{record['rows']} valid rows" + (f" ({simulated} of users active in it, read from their other domains)"
                                             if simulated else "")
    if "skipped" in record:
        return f"term {name:<16} {domain}: off ({record['skipped']}; {rows})"
    p = record["params"]
    chosen = ", ".join(f"{k} {v:g}" for k, v in p.items())
    tried = {tuple(t[k] for k in p): t["value"] for t in record["valid_ndcg@10"]}
    without = next((t["value"] for t in record["valid_ndcg@10"] if t["weight"] == 0.0), float("nan"))
    return (f"term {name:<16} {domain}: {chosen}; valid NDCG@10 {tried[tuple(p.values())]:.4f} "
            f"({without:.4f} without; {rows})")


def report_lines(report: Mapping) -> list[str]:
    """The lines ``crossrec train`` prints for a fit report (:func:`fit_terms`): one per term and domain."""
    lines = []
    for name, entry in report.get("terms", {}).items():
        if "skipped" in entry:
            lines.append(f"term {name:<16} off ({entry['skipped']})")
        for domain, record in entry.get("domains", {}).items():
            lines.append(term_line(name, domain, record))
    for domain, record in report.get("stand_in", {}).get("domains", {}).items():
        lines.append(term_line("stand_in", domain, record))
    return lines


__all__ = ["fit_terms", "report_lines", "term_line", "MAX_ROWS", "MIN_COLD_ROWS", "ENOUGH_COLD_ROWS",
           "SIMULATED_COLD_ROWS"]
