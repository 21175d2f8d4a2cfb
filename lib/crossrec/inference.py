"""The one inference path of a trained crossrec model: histories -> scores -> top-K, per domain.

    histories (global item ids, oldest first)
    -> Predictor.collate: the newest ``max_seq_len`` events, right-padded (B, T)
    -> the Transformer's shared user state, once per batch for every domain (item table looked up, not re-encoded)
    -> per domain d: scores = domain_head(state, d) @ item_reps_d.T + item_bias_d              (B, n_d)
    -> + the artifact's score terms (crossrec.rerank.base.TermSet.apply), when it has them
    -> rows with an empty history: the popularity vector instead (there is no user state to score from)
    -> every item of the history in d (the whole history given, not only the window): -inf
    -> Predictor.topk

Validation during training (:func:`crossrec.train.worker.validate_shard`), the evaluation protocol
(:func:`crossrec.evaluate.protocol.transformer_score_fn`), the score stage (:class:`crossrec.score.topk.Scorer`) and
the term fit (:func:`crossrec.rerank.fit.fit_terms`) all score through a :class:`Predictor`. What is constant for a
model in eval mode (the item table, each domain's item representations and their covariance, the terms' dense
tables) is computed once per Predictor: build one per pass over the data, not per batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from crossrec.model.transformer import CrossDomainTransformer
    from crossrec.rerank.base import TermSet


def score_covariance(item_reps: Tensor, bias: Tensor | None = None) -> Tensor:
    """(n_d, D) item representations and their (n_d,) biases (None = none) -> the (D, D) covariance over the items
    (unbiased), (D + 1, D + 1) with the biases as a last column: the standard deviation of a user's scores
    ``h @ item_reps.T + bias`` is ``sqrt(h' cov h')``, ``h' = [h, 1]`` (crossrec.rerank.base.score_std)."""
    x = item_reps.float() if bias is None else torch.cat([item_reps.float(), bias.float()[:, None]], 1)
    return torch.cov(x.T)


@dataclass(eq=False)
class Batch:
    """A batch of histories, ready to score in any domain.

    Attributes:
        histories: per row, the (filtered) history: global item ids, oldest first; its items are the ones excluded.
        inputs: the model input, ``item_idx`` / ``domain_idx`` / ``event_ts`` (B, T) long on the model's device.
        empty: (B,) bool, rows without any event (scored by popularity).
        states: (B, D) the shared user state (before the domain head); computed on first use.
        seen: per domain, the (rows, columns) of the history items in that domain; computed on first use.
    """

    histories: list[np.ndarray]
    inputs: dict[str, Tensor]
    empty: Tensor
    states: Tensor | None = None
    seen: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.histories)


class Predictor:
    """A model (in eval mode), its optional score terms and a popularity vector, scoring batches of histories.

    Args:
        model: the :class:`~crossrec.model.transformer.CrossDomainTransformer`; put in eval mode here. Everything
            runs on its device.
        terms: the artifact's :class:`~crossrec.rerank.base.TermSet` (its dense tables are built here); None = the
            Transformer alone.
        popularity: (n_items+1,) scores of each item for rows with an empty history (e.g. training counts); None = 0.
        item_table: (n_items+1, D) the item representations to score with (e.g. with rescaled id embeddings, see
            :mod:`crossrec.train.id_shrinkage`); None = the model's own :meth:`item_table`.
    """

    def __init__(self, model: "CrossDomainTransformer", terms: "TermSet | None" = None,
                 popularity: np.ndarray | Tensor | None = None, item_table: Tensor | None = None):
        model.eval()
        self.model = model
        self.terms = terms
        self.device = model.domain_offsets.device
        n = model.config.n_items
        self.item_domain = model.item_encoder.item_domain.cpu().numpy()  # (n+1,) domain of each id
        self.item_col = model.domain_item_idx.cpu().numpy()  # (n+1,) column of each id in its domain
        pop = torch.zeros(n + 1) if popularity is None else torch.as_tensor(popularity)
        assert pop.shape == (n + 1,), f"popularity must have n_items + 1 = {n + 1} entries, got {tuple(pop.shape)}"
        self.popularity = pop.to(device=self.device, dtype=torch.float32)
        if item_table is None:
            with torch.inference_mode():
                item_table = model.item_table()
        assert item_table.shape == (n + 1, model.config.d_model), f"item_table must be ({n + 1}, D), got {tuple(item_table.shape)}"
        self.item_table = item_table  # (n+1, D): history items are looked up, not re-encoded
        self._reps: dict[int, Tensor] = {}
        self._bias: dict[int, Tensor | None] = {}
        self._covs: dict[int, Tensor] = {}
        if terms is not None:
            terms.prepare()

    # ----------------------------------------------------------------------------------------------- inputs
    def collate(self, histories: Sequence[np.ndarray], timestamps: Sequence[np.ndarray],
                keep_domains: np.ndarray | None = None) -> Batch:
        """Histories (global ids, oldest first) and their event times -> a :class:`Batch`: the newest ``max_seq_len``
        events of each, right-padded to the longest (T >= 1). ``keep_domains``: read only the events of these
        domain_idx (a model trained on some domains only, or a user seen as new to a domain)."""
        hist, tss = [], []
        for h, t in zip(histories, timestamps):
            h, t = np.asarray(h, dtype=np.int64), np.asarray(t, dtype=np.int64)
            assert h.shape == t.shape, f"a history and its timestamps differ in length: {h.shape} vs {t.shape}"
            if keep_domains is not None:
                keep = np.isin(self.item_domain[h], keep_domains)
                h, t = h[keep], t[keep]
            hist.append(h)
            tss.append(t)
        max_len = self.model.config.max_seq_len
        T = max(1, max((min(len(h), max_len) for h in hist), default=1))
        items = np.zeros((len(hist), T), dtype=np.int64)
        ts = np.zeros((len(hist), T), dtype=np.int64)
        for b, (h, t) in enumerate(zip(hist, tss)):
            items[b, : min(len(h), max_len)] = h[-max_len:]
            ts[b, : min(len(t), max_len)] = t[-max_len:]
        inputs = {"item_idx": items, "domain_idx": np.where(items > 0, self.item_domain[items], 0), "event_ts": ts}
        return Batch(hist, {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()},
                     torch.tensor([len(h) == 0 for h in hist], dtype=torch.bool, device=self.device))

    # ------------------------------------------------------------------------------------- per-model state
    @torch.inference_mode()
    def domain_reps(self, domain: int) -> Tensor:
        """(n_d, D) representations of ``domain``'s items, in domain_item_idx order (computed once)."""
        d = int(domain)
        if d not in self._reps:
            self._reps[d] = self.item_table[self.model.domain_items(d)]
        return self._reps[d]

    @torch.inference_mode()
    def domain_bias(self, domain: int) -> Tensor | None:
        """(n_d,) the model's biases of ``domain``'s items, in domain_item_idx order; None without biases."""
        d = int(domain)
        if d not in self._bias:
            bias = self.model.item_bias
            self._bias[d] = None if bias is None else bias[self.model.domain_items(d)].to(self.item_table.dtype)
        return self._bias[d]

    @torch.inference_mode()
    def covariance(self, domain: int) -> Tensor:
        """:func:`score_covariance` of :meth:`domain_reps` and :meth:`domain_bias` (computed once)."""
        d = int(domain)
        if d not in self._covs:
            self._covs[d] = score_covariance(self.domain_reps(d), self.domain_bias(d))
        return self._covs[d]

    # ------------------------------------------------------------------------------------------- the path
    @torch.inference_mode()
    def states(self, batch: Batch) -> Tensor:
        """(B, D) the shared user state of each row (one encoder pass per batch, whatever the domains scored)."""
        if batch.states is None:
            batch.states = self.model.last_states(batch.inputs, self.item_table)
        return batch.states

    @torch.inference_mode()
    def model_scores(self, batch: Batch, domain: int) -> tuple[Tensor, Tensor]:
        """The Transformer's scores (B, n_d) of ``domain``'s items (biases included) and the user vectors h (B, D)
        they come from."""
        h = self.model.domain_head(self.states(batch), int(domain))  # (B, D)
        bias = self.domain_bias(domain)
        if bias is None:
            return h @ self.domain_reps(domain).T, h
        return torch.addmm(bias[None, :], h, self.domain_reps(domain).T), h

    @torch.inference_mode()
    def finalize(self, batch: Batch, domain: int, scores: Tensor, inplace: bool = False) -> Tensor:
        """Scores (B, n_d) -> the same with empty-history rows set to the popularity vector and every history item of
        ``domain`` set to -inf (out of place: ``scores`` is left as it is, unless ``inplace``)."""
        d = int(domain)
        if bool(batch.empty.any()):
            pop = self.popularity[self.model.domain_items(d)].to(scores.dtype)  # (n_d,)
            if inplace:
                scores[batch.empty] = pop
            else:
                scores = torch.where(batch.empty[:, None], pop[None, :], scores)
                inplace = True  # a new tensor now
        if d not in batch.seen:
            lens = np.array([len(h) for h in batch.histories], dtype=np.int64)
            flat = np.concatenate(batch.histories) if lens.sum() else np.zeros(0, dtype=np.int64)
            rows = np.repeat(np.arange(len(batch)), lens)
            in_d = self.item_domain[flat] == d  # every history item in d, not only the window's
            batch.seen[d] = (torch.from_numpy(rows[in_d]).to(self.device),
                             torch.from_numpy(self.item_col[flat[in_d]]).to(self.device))
        rows, cols = batch.seen[d]
        if rows.numel():
            minus_inf = torch.tensor(-torch.inf, dtype=scores.dtype, device=scores.device)
            scores = scores.index_put_((rows, cols), minus_inf) if inplace else scores.index_put((rows, cols), minus_inf)
        return scores

    @torch.inference_mode()
    def scores(self, batch: Batch, domain: int) -> Tensor:
        """(B, n_d) final scores of ``domain``'s items: model scores -> terms -> popularity for empty histories ->
        history items at -inf. Columns in domain_item_idx order. Every step after the product works in place on
        that product's tensor: each (B, n_d) tensor less is a pass over memory less."""
        scores, h = self.model_scores(batch, domain)
        if self.terms is not None and self.terms.active(domain):
            scores = self.terms.apply(scores, batch.inputs["item_idx"], domain, h, self.covariance(domain), inplace=True)
        return self.finalize(batch, domain, scores, inplace=True)

    @torch.inference_mode()
    def topk(self, batch: Batch, domain: int, k: int) -> tuple[Tensor, Tensor]:
        """(values, columns), each (B, min(k, n_d)), highest first; -inf values are history items (a row with fewer
        than k unseen items)."""
        assert k >= 1, f"k must be >= 1, got {k}"
        scores = self.scores(batch, domain)
        return torch.topk(scores, min(k, scores.shape[1]), dim=1)


__all__ = ["Predictor", "Batch", "score_covariance"]
