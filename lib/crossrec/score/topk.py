"""Top-K per domain for a batch of users, from a trained model artifact (PyTorch only; no Spark).

:class:`Scorer` is what each Spark executor process holds (loaded once, see :func:`get_scorer`): the model,
each domain's item matrix (``domain_item_reps``, computed once), the artifact's catalog and a popularity
vector for the fallback. :meth:`Scorer.score` takes a batch of users' histories (global ``item_idx`` of the
artifact's catalog, oldest first) and returns, per user and domain, the top-K items the user has not
interacted with:

1. one Transformer pass gives each user's shared state; ``domain_head`` turns it into h_u^d per domain;
2. scores = h_u^d @ items_d^T (B, n_d), plus the artifact's score terms when it has them (co-occurrence, text
   similarity, next item and, for users with no event in d, popularity: ``CrossDomainTransformer.combine_scores``,
   from the dense item-item tables ``build_term_tables`` makes at load for domains small enough);
   every item of the user's history in d is set to -inf;
3. ``torch.topk``; -inf picks (the domain has fewer than K unseen items) are dropped;
4. reason = the history item (any domain) whose representation is most similar (cosine) to the pick:
   the event that most supports it, often from another domain.

Users with no usable history (none of their items is in the artifact's catalog) get the K most popular
unseen items of each domain, with reason ``"popularity"``. The GPU is used when the process has one.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

POPULARITY = "popularity"
_SCORERS: dict[tuple, "Scorer"] = {}
_LOCK = threading.Lock()


@dataclass
class DomainPicks:
    """Top-K of one domain for a batch: (B, K) arrays; rows shorter than K are padded with -1 / -inf."""

    item_idx: np.ndarray  # (B, K) global item ids, -1 = no pick
    score: np.ndarray  # (B, K) float32
    reason_idx: np.ndarray  # (B, K) global item id of the supporting history item, 0 = popularity fallback


class Scorer:
    """A model artifact ready to score: model, per-domain item matrices, catalog, popularity."""

    def __init__(self, folder: str | Path, k: int, popularity: np.ndarray | None = None, device: str | None = None,
                 threads: int | None = None):
        import pandas as pd
        import torch

        from crossrec.model.transformer import load

        assert k >= 1, f"k must be >= 1, got {k}"
        if threads:
            torch.set_num_threads(threads)
        self.folder = Path(folder)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load(self.folder, device=self.device)
        self.k = k
        self.version = self.folder.name
        index = pd.read_parquet(self.folder / "item_index.parquet").sort_values("item_idx")
        n = self.model.config.n_items
        assert len(index) == n and (index.item_idx.values == np.arange(1, n + 1)).all(), (
            f"{self.folder}/item_index.parquet does not match the model's {n} items")
        self.item_id = np.array([""] + index.item_id.tolist(), dtype=object)  # global idx -> item_id
        self.item_key = np.array([POPULARITY] + (index.domain + ":" + index.item_id).tolist(), dtype=object)  # -> reason
        self.item_domain = np.zeros(n + 1, dtype=np.int64)
        self.item_domain[index.item_idx.values] = index.domain_idx.values
        self.item_col = np.zeros(n + 1, dtype=np.int64)
        self.item_col[index.item_idx.values] = index.domain_item_idx.values
        self.domains = [d for _, d in sorted(set(zip(index.domain_idx, index.domain)))]
        meta_file = self.folder / "metrics.json"
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.exists() else {}
        self.input_domains = meta.get("input_domains")
        assert self.input_domains is None, f"{self.folder} is a single-domain baseline ({self.input_domains}); score with a crossrec model"
        pop = np.zeros(n + 1, dtype=np.float64) if popularity is None else np.asarray(popularity, dtype=np.float64)
        assert pop.shape == (n + 1,), f"popularity must have n_items + 1 = {n + 1} entries, got {pop.shape}"
        with torch.inference_mode():
            self.model.build_term_tables()  # small domains: the score terms as dense item-item tables
            self.table = self.model.item_table()  # (n + 1, D): history items are looked up, not re-encoded
            self.table_norm = torch.nn.functional.normalize(self.table.float(), dim=-1)
            self.reps = [self.table[self.model.domain_items(d)] for d in range(len(self.domains))]  # (n_d, D) each
            self.rep_norm = [torch.nn.functional.normalize(r.float(), dim=-1) for r in self.reps]
            self.covs = [self.model.score_covariance(r) if self.model.has_score_terms(d) else None
                         for d, r in enumerate(self.reps)]
        self.pop = [torch.as_tensor(pop[self.model.domain_items(d).cpu().numpy()], dtype=torch.float32, device=self.device)
                    for d in range(len(self.domains))]
        self._arrow: dict | None = None  # Arrow string arrays for record_batch, built on first use
        log.info("scorer: %s on %s, %d items in %s, k=%d", self.version, self.device, n, self.domains, k)

    def score(self, histories: list[np.ndarray], timestamps: list[np.ndarray]) -> list[DomainPicks]:
        """Top-K per domain (list indexed by domain_idx) for each history (global item ids, oldest first)."""
        import torch

        from crossrec.train.loop import collate_history

        B = len(histories)
        max_len = self.model.config.max_seq_len
        hist = [np.asarray(h, dtype=np.int64) for h in histories]
        inputs = collate_history(hist, [np.asarray(t, dtype=np.int64) for t in timestamps], max_len, self.item_domain)
        batch = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}
        empty = torch.tensor([len(h) == 0 for h in hist], device=self.device)
        any_empty = bool(empty.any())
        lens = np.array([len(h) for h in hist], dtype=np.int64)
        flat = np.concatenate(hist) if lens.sum() else np.zeros(0, dtype=np.int64)  # every history item, all domains
        flat_row = np.repeat(np.arange(B), lens)
        out = []
        with torch.inference_mode():
            states = self.model.last_states(batch, self.table)  # (B, D) one encoder pass for every domain
            hist_rep = self.table_norm[batch["item_idx"]]  # (B, T, D) unit vectors
            pad = batch["item_idx"] == 0  # (B, T)
            for d in range(len(self.domains)):
                n_d = self.reps[d].shape[0]
                h = self.model.domain_head(states, d)  # (B, D)
                scores = h @ self.reps[d].T  # (B, n_d) float32
                if self.covs[d] is not None:  # + the artifact's score terms (crossrec.model.cooccurrence)
                    scores = self.model.combine_scores(scores, batch["item_idx"], d, h, self.covs[d])
                if any_empty:
                    scores[empty] = self.pop[d]  # no usable history: popularity (exact counts in float32 up to 2^24)
                sel = self.item_domain[flat] == d  # every history item of the user in d (all, not only the window)
                if sel.any():
                    rows = torch.from_numpy(flat_row[sel]).to(self.device)
                    cols = torch.from_numpy(self.item_col[flat[sel]]).to(self.device)
                    scores[rows, cols] = -torch.inf
                k = min(self.k, n_d)
                top, col = torch.topk(scores, k, dim=1)  # (B, k) sorted, highest first
                picked = self.model.domain_items(d)[col]  # (B, k) global ids
                sim = torch.einsum("btd,bkd->bkt", hist_rep, self.rep_norm[d][col])  # (B, k, T)
                sim = sim.masked_fill(pad[:, None, :], -torch.inf)
                reason = batch["item_idx"].gather(1, sim.argmax(-1).reshape(B, -1)).reshape(B, k)  # (B, k)
                valid = torch.isfinite(top)
                if any_empty:
                    reason[empty] = 0
                out.append(DomainPicks(
                    item_idx=torch.where(valid, picked, torch.full_like(picked, -1)).cpu().numpy(),
                    score=top.cpu().numpy(),
                    reason_idx=reason.cpu().numpy(),
                ))
        return out

    def _row_index(self, n_users: int, histories: list[np.ndarray], timestamps: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The output rows of a batch as integer arrays: ``user`` (position in the batch), ``domain``
        (domain_idx), ``rank``, ``item`` / ``reason`` (global item ids; reason 0 = popularity) and ``score``."""
        parts: dict[str, list] = {c: [] for c in ("user", "domain", "rank", "item", "score", "reason")}
        for d, picks in enumerate(self.score(histories, timestamps)):
            valid = picks.item_idx >= 0  # (B, k); invalid picks only at the end of a row
            n_k = picks.item_idx.shape[1]
            flat = valid.ravel()
            parts["user"].append(np.repeat(np.arange(n_users), n_k)[flat])
            parts["domain"].append(np.full(int(flat.sum()), d, dtype=np.int64))
            parts["rank"].append(np.tile(np.arange(1, n_k + 1, dtype=np.int64), n_users)[flat])
            parts["item"].append(picks.item_idx[valid])
            parts["score"].append(picks.score[valid].astype(np.float64))
            parts["reason"].append(picks.reason_idx[valid])
        return {c: np.concatenate(v) for c, v in parts.items()}

    def rows(self, user_ids: list[str], histories: list[np.ndarray], timestamps: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Recommendation rows (columns of gold.recommendations without run_date) for a batch of users."""
        ix = self._row_index(len(user_ids), histories, timestamps)
        return {"user_id": np.asarray(user_ids, dtype=object)[ix["user"]],
                "domain": np.asarray(self.domains, dtype=object)[ix["domain"]],
                "rank": ix["rank"], "item_id": self.item_id[ix["item"]], "score": ix["score"],
                "reason": self.item_key[ix["reason"]],
                "model_version": np.full(len(ix["user"]), self.version, dtype=object)}

    def record_batch(self, user_ids, histories: list[np.ndarray], timestamps: list[np.ndarray], run_date,
                     columns: list[str] | None = None):
        """:meth:`rows` plus ``run_date`` as a ``pyarrow.RecordBatch`` (gold.recommendations' columns, in the
        order of ``columns`` when given). Strings are gathered from Arrow arrays with ``take``: no Python string
        object per row. ``user_ids``: a pyarrow string array (or a list of str)."""
        import pyarrow as pa

        if self._arrow is None:
            self._arrow = {"item_id": pa.array(self.item_id.tolist(), pa.string()),
                           "reason": pa.array(self.item_key.tolist(), pa.string()),
                           "domain": pa.array(self.domains, pa.string()),
                           "model_version": pa.array([self.version], pa.string())}
        users = user_ids if isinstance(user_ids, pa.Array) else pa.array(list(user_ids), pa.string())
        ix = self._row_index(len(users), histories, timestamps)
        n = len(ix["user"])
        cols = {"run_date": pa.array(np.full(n, np.datetime64(run_date, "D")), pa.date32()),
                "user_id": users.take(ix["user"]),
                "domain": self._arrow["domain"].take(ix["domain"]),
                "rank": pa.array(ix["rank"], pa.int64()),
                "item_id": self._arrow["item_id"].take(ix["item"]),
                "score": pa.array(ix["score"], pa.float64()),
                "model_version": self._arrow["model_version"].take(np.zeros(n, dtype=np.int64)),
                "reason": self._arrow["reason"].take(ix["reason"])}
        names = list(columns or cols)
        return pa.RecordBatch.from_arrays([cols[c] for c in names], names=names)


def get_scorer(folder: str, k: int, popularity: np.ndarray | None = None, threads: int | None = None) -> Scorer:
    """The process-wide :class:`Scorer` for (folder, k): built on first use, then reused by every batch and
    task this Python worker runs (Spark reuses Python workers), so the model loads once per executor process."""
    key = (os.path.abspath(folder), k)
    with _LOCK:
        if key not in _SCORERS:
            _SCORERS.clear()  # a new artifact replaces the old one
            _SCORERS[key] = Scorer(folder, k, popularity, threads=threads)
        return _SCORERS[key]


__all__ = ["Scorer", "DomainPicks", "get_scorer", "POPULARITY"]
