"""Top-K per domain for a batch of users, from a trained model artifact (PyTorch only; no Spark).

:class:`Scorer` is what each Spark executor process holds (loaded once, see :func:`get_scorer`): the artifact
(model, score terms, catalog) behind a :class:`crossrec.inference.Predictor` with a popularity vector for the
fallback. :meth:`Scorer.score` takes a batch of users' histories (global ``item_idx`` of the artifact's catalog,
oldest first) and returns, per user and domain, the top-K items the user has not interacted with:

1. the one inference path (:mod:`crossrec.inference`): one Transformer pass gives each user's shared state, the
   domain head and the domain's item matrix the scores (B, n_d), the artifact's score terms are added
   (:class:`crossrec.rerank.base.TermSet`, from the dense item-item tables it builds at load for domains small
   enough), users without history get popularity, every item of the user's history in d is set to -inf, and
   ``torch.topk`` picks; -inf picks (the domain has fewer than K unseen items) are dropped;
2. reason = the history item (any domain) whose representation is most similar (cosine) to the pick:
   the event that most supports it, often from another domain. When the pick and that item share attribute
   entities (the model's entity embeddings: an author, a brand), the reason names the link: kind
   ``shared_entity`` and, of the shared entities, the one whose embedding is most similar to the pick's
   representation (what the model drew on most); else kind ``history_item``. Where an entity score term is on
   (:mod:`crossrec.rerank.entity`), a pick it raised takes the event and entity that term credits most.

Users with no usable history (none of their items is in the artifact's catalog) get the K most popular
unseen items of each domain, with reason ``"popularity"``. The GPU is used when the process has one.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossrec import columns as C

log = logging.getLogger(__name__)

POPULARITY = "popularity"
HISTORY_ITEM, SHARED_ENTITY = "history_item", "shared_entity"  # the other reason kinds
_SCORERS: dict[tuple, "Scorer"] = {}
_LOCK = threading.Lock()


@dataclass
class DomainPicks:
    """Top-K of one domain for a batch: (B, K) arrays; rows shorter than K are padded with -1 / -inf."""

    item_idx: np.ndarray  # (B, K) global item ids, -1 = no pick
    score: np.ndarray  # (B, K) float32
    reason_idx: np.ndarray  # (B, K) global item id of the supporting history item, 0 = popularity fallback
    reason_entity: np.ndarray  # (B, K) entity id the pick shares with that item (1-based, artifact.entities), 0 = none

    @property
    def reason_kind(self) -> np.ndarray:
        """(B, K) 0 = popularity, 1 = history_item, 2 = shared_entity (index into :data:`REASON_KINDS`)."""
        return np.where(self.reason_idx == 0, 0, np.where(self.reason_entity > 0, 2, 1))


class Scorer:
    """A model artifact ready to score: its :class:`~crossrec.inference.Predictor`, catalog and reason vectors."""

    def __init__(self, folder: str | Path, k: int, popularity: np.ndarray | None = None, device: str | None = None,
                 threads: int | None = None):
        import torch

        from crossrec.inference import Predictor
        from crossrec.model.artifact import load_artifact

        assert k >= 1, f"k must be >= 1, got {k}"
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        artifact = load_artifact(folder, device=self.device)
        self.folder, self.version, self.model, self.k = artifact.folder, artifact.version, artifact.model, k
        index = artifact.item_index
        self.item_id = np.array([""] + index.item_id.tolist(), dtype=object)  # global idx -> item_id
        self.item_key = np.array([POPULARITY] + (index.domain + ":" + index.item_id).tolist(), dtype=object)  # -> reason
        self.entity_key = np.array([None] + list(artifact.entities), dtype=object)  # entity id -> reason_entity
        self.domains = [d for _, d in sorted(set(zip(index.domain_idx, index.domain)))]
        self.input_domains = artifact.metrics.get("input_domains")
        assert self.input_domains is None, f"{self.folder} is a single-domain baseline ({self.input_domains}); score with a crossrec model"
        self.predictor = Predictor(self.model, artifact.terms, popularity)
        with torch.inference_mode():  # unit vectors of every item: the reasons' cosines
            self.table_norm = torch.nn.functional.normalize(self.predictor.item_table.float(), dim=-1)  # (n + 1, D)
            self.rep_norm = [self.table_norm[self.model.domain_items(d)] for d in range(len(self.domains))]  # (n_d, D)
            enc = self.model.item_encoder
            self.item_entities = enc.item_entities if enc.entity_emb is not None else None  # (n + 1, E)
            self.entity_norm = (torch.nn.functional.normalize(enc.entity_emb.weight.float(), dim=-1)
                                if enc.entity_emb is not None else None)  # (n_entities + 1, D)
        self._arrow: dict | None = None  # Arrow string arrays for record_batch, built on first use
        log.info("scorer: %s on %s, %d items in %s, k=%d", self.version, self.device, self.model.config.n_items,
                 self.domains, k)

    def score(self, histories: list[np.ndarray], timestamps: list[np.ndarray]) -> list[DomainPicks]:
        """Top-K per domain (list indexed by domain_idx) for each history (global item ids, oldest first)."""
        import torch

        batch = self.predictor.collate(histories, timestamps)
        items = batch.inputs["item_idx"]  # (B, T) the window the model read
        B = len(batch)
        out = []
        with torch.inference_mode():
            hist_rep = self.table_norm[items]  # (B, T, D) unit vectors
            pad = items == 0  # (B, T)
            for d in range(len(self.domains)):
                top, col = self.predictor.topk(batch, d, self.k)  # (B, k) sorted, highest first
                k = top.shape[1]
                picked = self.model.domain_items(d)[col]  # (B, k) global ids
                sim = torch.einsum("btd,bkd->bkt", hist_rep, self.rep_norm[d][col])  # (B, k, T)
                sim = sim.masked_fill(pad[:, None, :], -torch.inf)
                reason = items.gather(1, sim.argmax(-1).reshape(B, -1)).reshape(B, k)  # (B, k)
                valid = torch.isfinite(top)
                reason[batch.empty] = 0
                entity = self._shared_entity(picked, reason, self.rep_norm[d][col])
                reason, entity = self._entity_term_reasons(items, picked, d, reason, entity)
                out.append(DomainPicks(
                    item_idx=torch.where(valid, picked, torch.full_like(picked, -1)).cpu().numpy(),
                    score=top.cpu().numpy(),
                    reason_idx=reason.cpu().numpy(),
                    reason_entity=entity.cpu().numpy(),
                ))
        return out

    def _entity_term_reasons(self, items, picked, d, reason, entity):
        """Where an entity term adds to domain ``d``'s scores (for the rows of its kind), a pick that shares entities
        with the events it reads takes as reason the event and entity that term credits most
        (:meth:`crossrec.rerank.entity.EntityTerm.attribute`): the score's own account of that link."""
        import torch

        from crossrec.rerank.base import term_rows
        from crossrec.rerank.entity import EntityTerm

        for term, p in self.predictor.terms.active(d) if self.predictor.terms is not None else []:
            if not isinstance(term, EntityTerm):
                continue
            rows = term_rows(items, term.catalog.item_domain, d, term.applies_to)
            rows = torch.arange(items.shape[0], device=items.device) if rows is None else rows
            if rows.numel() == 0:
                continue
            pos, ent, credit = term.attribute(items[rows], picked[rows], d, p.get("decay", 1.0))
            linked = credit > 0
            reason[rows] = torch.where(linked, items[rows].gather(1, pos), reason[rows])
            entity[rows] = torch.where(linked, ent, entity[rows])
        return reason, entity

    def _shared_entity(self, picked, reason, pick_rep):
        """(B, k) the entity id each pick shares with its reason item (0 = none or no entities): of the shared ones,
        the entity whose embedding is most similar (cosine) to the pick's representation ``pick_rep`` (B, k, D)."""
        import torch

        if self.item_entities is None:
            return torch.zeros_like(picked)
        mine, theirs = self.item_entities[picked], self.item_entities[reason]  # (B, k, E) each, 0 = none
        shared = (mine[..., :, None] == theirs[..., None, :]).any(-1) & (mine != 0) & (reason != 0)[..., None]
        sim = torch.einsum("bkd,bked->bke", pick_rep, self.entity_norm[mine]).masked_fill(~shared, -torch.inf)
        best = mine.gather(-1, sim.argmax(-1, keepdim=True)).squeeze(-1)  # (B, k)
        return torch.where(shared.any(-1), best, torch.zeros_like(best))

    def _row_index(self, n_users: int, histories: list[np.ndarray], timestamps: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The output rows of a batch as integer arrays: ``user`` (position in the batch), ``domain``
        (domain_idx), ``rank``, ``item`` / ``reason`` (global item ids; reason 0 = popularity) and ``score``."""
        parts: dict[str, list] = {c: [] for c in ("user", "domain", "rank", "item", "score", "reason", "kind", "entity")}
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
            parts["kind"].append(picks.reason_kind[valid])
            parts["entity"].append(picks.reason_entity[valid])
        return {c: np.concatenate(v) for c, v in parts.items()}

    def rows(self, user_ids: list[str], histories: list[np.ndarray], timestamps: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Recommendation rows (columns of gold.recommendations without run_date) for a batch of users."""
        ix = self._row_index(len(user_ids), histories, timestamps)
        return {C.USER_ID: np.asarray(user_ids, dtype=object)[ix["user"]],
                C.DOMAIN: np.asarray(self.domains, dtype=object)[ix["domain"]],
                C.RANK: ix["rank"], C.ITEM_ID: self.item_id[ix["item"]], C.SCORE: ix["score"],
                C.REASON: self.item_key[ix["reason"]],
                C.REASON_KIND: np.asarray(REASON_KINDS, dtype=object)[ix["kind"]],
                C.REASON_ENTITY: self.entity_key[ix["entity"]],
                C.MODEL_VERSION: np.full(len(ix["user"]), self.version, dtype=object)}

    def record_batch(self, user_ids, histories: list[np.ndarray], timestamps: list[np.ndarray], run_date,
                     columns: list[str] | None = None):
        """:meth:`rows` plus ``run_date`` as a ``pyarrow.RecordBatch`` (gold.recommendations' columns, in the
        order of ``columns`` when given). Strings are gathered from Arrow arrays with ``take``: no Python string
        object per row. ``user_ids``: a pyarrow string array (or a list of str)."""
        import pyarrow as pa

        if self._arrow is None:
            self._arrow = {C.ITEM_ID: pa.array(self.item_id.tolist(), pa.string()),
                           C.REASON: pa.array(self.item_key.tolist(), pa.string()),
                           C.REASON_KIND: pa.array(list(REASON_KINDS), pa.string()),
                           C.REASON_ENTITY: pa.array(self.entity_key.tolist(), pa.string()),
                           C.DOMAIN: pa.array(self.domains, pa.string()),
                           C.MODEL_VERSION: pa.array([self.version], pa.string())}
        users = user_ids if isinstance(user_ids, pa.Array) else pa.array(list(user_ids), pa.string())
        ix = self._row_index(len(users), histories, timestamps)
        n = len(ix["user"])
        cols = {C.RUN_DATE: pa.array(np.full(n, np.datetime64(run_date, "D")), pa.date32()),
                C.USER_ID: users.take(ix["user"]),
                C.DOMAIN: self._arrow[C.DOMAIN].take(ix["domain"]),
                C.RANK: pa.array(ix["rank"], pa.int64()),
                C.ITEM_ID: self._arrow[C.ITEM_ID].take(ix["item"]),
                C.SCORE: pa.array(ix["score"], pa.float64()),
                C.MODEL_VERSION: self._arrow[C.MODEL_VERSION].take(np.zeros(n, dtype=np.int64)),
                C.REASON: self._arrow[C.REASON].take(ix["reason"]),
                C.REASON_KIND: self._arrow[C.REASON_KIND].take(ix["kind"]),
                C.REASON_ENTITY: self._arrow[C.REASON_ENTITY].take(ix["entity"])}
        names = list(columns or cols)
        return pa.RecordBatch.from_arrays([cols[c] for c in names], names=names)


def retain_freed_memory() -> bool:
    """Keep freed memory in this process's heap (glibc ``mallopt``: no ``mmap`` for blocks under 32 MiB, no trimming
    under 1 GiB), so that the (batch, domain items) score tensors each batch allocates reuse pages already mapped
    instead of faulting in fresh zeroed ones, which cost as much as the arithmetic on them. The process keeps its peak
    heap. Returns False where the C library has no ``mallopt`` (not glibc): nothing changes there."""
    import ctypes
    import ctypes.util

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError, TypeError):
        return False


def get_scorer(folder: str, k: int, popularity: np.ndarray | None = None, threads: int | None = None) -> Scorer:
    """The process-wide :class:`Scorer` for (folder, k): built on first use, then reused by every batch and
    task this Python worker runs (Spark reuses Python workers), so the model loads once per executor process."""
    key = (folder if "://" in str(folder) else os.path.abspath(folder), k)
    with _LOCK:
        if key not in _SCORERS:
            if not _SCORERS and not retain_freed_memory():
                log.debug("no glibc mallopt here: score tensors are allocated afresh for each batch")
            _SCORERS.clear()  # a new artifact replaces the old one
            _SCORERS[key] = Scorer(folder, k, popularity, threads=threads)
        return _SCORERS[key]


REASON_KINDS = (POPULARITY, HISTORY_ITEM, SHARED_ENTITY)

__all__ = ["Scorer", "DomainPicks", "get_scorer", "retain_freed_memory", "POPULARITY", "HISTORY_ITEM", "SHARED_ENTITY",
           "REASON_KINDS"]
