"""The text-similarity term: cosines, in the frozen text encoder's space, between an item and the user's recent items
of its domain.

The Transformer reads an item's text only through its learned adapter, whose ``d_model`` dimensions keep what
predicts the next item on average; how close two titles are in the text encoder's own space (another flavour or size
of the same product, the next volume of a series) is mostly lost there. This term adds it back::

    f(u, j) = sum_t r**a(t) * cos(e_t, e_j)

over the user's history events ``t`` of j's domain (``e`` the frozen text embeddings, ``a(t)`` the events of the
domain after ``t``). It needs no training events, so it also ranks items never seen in training; it needs the model's
frozen text table.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch
from torch import Tensor

from crossrec.rerank.base import DECAY_GRID, Catalog, ScoreTerm
from crossrec.rerank.sparse import add_sparse_rows_times, recency_weights

if TYPE_CHECKING:
    from crossrec.model.baselines import InteractionData

TEXT_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# the term reads its table only while the batch's history events of the domain stay under this many per row: the
# sparse (B, n_d) @ (n_d, n_d) product costs an order of magnitude more per multiply-add than the dense (B, text_dim)
# product on CPU
TEXT_TABLE_MAX_EVENTS = 24
NO_TEXT = "the model has no frozen text table (--no-text or a fine-tuned text encoder)"


def text_vectors(rows: Tensor, items: Tensor, weights: Tensor, n_rows: int, text_units: Tensor) -> Tensor:
    """(n_rows, text_dim): row r = the sum of ``weights[k]`` times item ``items[k]``'s unit text vector over the
    entries k with rows[k] = r (``text_units``: (n_items+1, text_dim))."""
    # (B, n_items + 1) sparse weights @ the unit table: faster on CPU than gathering the events' rows
    w = torch.sparse_coo_tensor(torch.stack([rows, items]), weights, (n_rows, text_units.shape[0]), check_invariants=False)
    return torch.sparse.mm(w, text_units)


class TextTerm:
    """What the two text terms share (mixed into a :class:`ScoreTerm`, before it): their grids, and the model's frozen
    text table as the whole state."""

    weights = TEXT_WEIGHT_GRID
    params = {"decay": DECAY_GRID}
    neutral = {"decay": 1.0}

    def unusable(self, catalog: Catalog) -> str | None:
        return None if catalog.text_units is not None else NO_TEXT

    def fit(self, events: "InteractionData", catalog: Catalog) -> None:
        self.load_state_dict({}, catalog)  # the text table is the whole state: nothing to learn from events

    def load_state_dict(self, state: Mapping[str, Tensor], catalog: Catalog) -> None:
        assert catalog.text_units is not None, f"{self.name}: {NO_TEXT}"
        super().load_state_dict(state, catalog)


class TextSimilarityTerm(TextTerm, ScoreTerm):
    """Warm users: recency-weighted text cosines to their history in the domain (see the module docstring)."""

    name = "text_similarity"
    applies_to = "warm"
    order = 20

    def __init__(self) -> None:
        self._tables: dict[int, Tensor] = {}

    def load_state_dict(self, state: Mapping[str, Tensor], catalog: Catalog) -> None:
        super().load_state_dict(state, catalog)
        self._tables = {}

    def features(self, item_idx: Tensor, domain: int, decay: float = 1.0) -> Tensor:
        """(B, T) histories -> (B, n_d): ``sum_t decay**a(t) * cos(e_t, e_j)`` over the events of ``domain``; 0 for
        users without history there. With the domain's cosine table and short histories, summed from the table."""
        out = torch.zeros(item_idx.shape[0], self.catalog.domain_size(domain), device=item_idx.device)
        self.add_to(out, item_idx, domain, torch.ones(item_idx.shape[0], device=item_idx.device), decay)
        return out

    def add_to(self, out: Tensor, item_idx: Tensor, domain: int, scale: Tensor, decay: float = 1.0) -> None:
        """The values (see :meth:`features`) times ``scale`` summed into ``out``: the scale goes into the sparse
        weights (or the text vectors), and the product accumulates in place."""
        B, c = item_idx.shape[0], self.catalog
        rows, items, w = recency_weights(item_idx, c.item_domain, domain, decay)
        table = self._tables.get(int(domain))
        if table is not None and rows.numel() <= TEXT_TABLE_MAX_EVENTS * B:
            add_sparse_rows_times(out, rows, c.item_col[items], w * scale[rows], table)
        else:
            out.addmm_(scale[:, None] * text_vectors(rows, items, w, B, c.text_units), c.domain_text_units(domain).T)

    def table_bytes(self, domain: int) -> int:
        return self.catalog.domain_size(domain) ** 2 * 4

    def build_table(self, domain: int) -> None:
        units = self.catalog.domain_text_units(domain)
        self._tables[int(domain)] = units @ units.T  # (n_d, n_d) cosines


__all__ = ["TextSimilarityTerm", "text_vectors", "TEXT_WEIGHT_GRID", "TEXT_TABLE_MAX_EVENTS"]
