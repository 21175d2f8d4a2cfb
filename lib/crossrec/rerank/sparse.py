"""Helpers shared by the score terms: CSR item-item matrices, sparse (B, n) @ table products, recency decay, and the
events of a right-padded (B, T) history that a term reads."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Mapping

import torch
from torch import Tensor

if TYPE_CHECKING:
    from crossrec.rerank.base import Catalog

# the CSR products used here (a CSR @ dense product accumulated in place) are covered by crossrec's tests
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


def domain_events(item_idx: Tensor, item_domain: Tensor, domain: int) -> Tensor:
    """(B, T) histories -> (B, T) bool: the positions holding an event of ``domain`` (padding never)."""
    return (item_idx != 0) & (item_domain[item_idx] == int(domain))


def csr_entries(indptr: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Positions (in a CSR matrix's indices / values) of every entry of ``rows``, row after row, and the number of
    entries of each row."""
    start = indptr[rows]
    lens = indptr[rows + 1] - start
    first = torch.cumsum(lens, 0) - lens  # where each row's entries start in the flat list
    flat = torch.repeat_interleave(start - first, lens) + torch.arange(int(lens.sum()), device=rows.device)
    return flat, lens


def check_item_pairs(indptr: Tensor, indices: Tensor, values: Tensor, item_domain: Tensor, what: str) -> None:
    """Assert that ``(indptr, indices, values)`` is a CSR matrix (n_items+1, n_items+1) of values >= 0 whose pairs lie
    within one domain (``item_domain``: (n_items+1,) domain of each item)."""
    n = item_domain.numel()
    assert indptr.shape == (n + 1,), f"indptr must be ({n + 1},), got {tuple(indptr.shape)}"
    assert indices.shape == values.shape and indices.dim() == 1, "indices and values must be 1-d of one length"
    assert int(indptr[0]) == 0 and int(indptr[-1]) == indices.numel(), "indptr must run from 0 to nnz"
    if indices.numel():
        assert bool((values >= 0).all()), f"{what}: values must be >= 0"
        assert 1 <= int(indices.min()) and int(indices.max()) < n, f"indices must be item ids 1..{n - 1}"
        rows = torch.repeat_interleave(torch.arange(n), (indptr[1:] - indptr[:-1]).cpu())
        dom = item_domain.cpu()
        assert bool((dom[rows] == dom[indices.long().cpu()]).all()), f"{what} must be within one domain"


def sparse_rows_times(rows: Tensor, cols: Tensor, weights: Tensor, n_rows: int, table: Tensor) -> Tensor:
    """(n_rows, table columns): row r = sum of ``weights[k] * table[cols[k]]`` over the entries k with rows[k] = r."""
    w = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights.float(), (n_rows, table.shape[0]), check_invariants=False)
    return torch.sparse.mm(w, table)


def add_sparse_rows_times(out: Tensor, rows: Tensor, cols: Tensor, weights: Tensor, table: Tensor) -> None:
    """``out += W @ table`` in place, with W the (out rows, table rows) sparse matrix of ``weights`` at (rows, cols)
    (repeated cells summed): :func:`sparse_rows_times` accumulated into ``out`` without a tensor of its own."""
    w = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights.float(), (out.shape[0], table.shape[0]),
                                check_invariants=False)
    out.addmm_(w.to_sparse_csr(), table)  # PyTorch accumulates a CSR @ dense product in place; a COO one it cannot


def decayed(values: Tensor, age: Tensor, decay: float) -> Tensor:
    """``values * decay**age``; ``values`` itself when decay is 1."""
    return values if decay == 1.0 else values * torch.pow(decay, age.float())


def distinct_history_items(item_idx: Tensor, item_domain: Tensor, domain: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, T) histories -> each distinct (row, history item of ``domain``): its row, item id and age (how many events
    of the domain follow the item's last occurrence; 0 = the latest)."""
    n = item_domain.numel()
    in_d = domain_events(item_idx, item_domain, domain)
    after = in_d.flip(1).cumsum(1, dtype=torch.int32).flip(1) - 1  # (B, T): events of the domain after each position
    rows, pos = in_d.nonzero(as_tuple=True)
    key, where = torch.unique(rows * n + item_idx[rows, pos], return_inverse=True)  # distinct (user, item)
    age = torch.full((key.numel(),), torch.iinfo(torch.int32).max, dtype=torch.int32, device=item_idx.device)
    age = age.scatter_reduce(0, where, after[rows, pos], "amin")  # the item's last occurrence
    return key // n, key % n, age


def recency_weights(item_idx: Tensor, item_domain: Tensor, domain: int | None, decay: float) -> tuple[Tensor, Tensor, Tensor]:
    """(B, T) histories -> the rows, global item ids and weights ``decay**age(t)`` of the events of ``domain`` (every
    event when None); ``age(t)``: the events counted after ``t``, 0 = the latest."""
    in_d = item_idx != 0  # (B, T)
    if domain is not None:
        in_d = domain_events(item_idx, item_domain, domain)
    after = in_d.flip(1).cumsum(1).flip(1) - 1  # events counted after each position
    rows, pos = in_d.nonzero(as_tuple=True)
    return rows, item_idx[rows, pos], torch.pow(torch.tensor(float(decay), device=item_idx.device), after[rows, pos].float())


__all__ = ["domain_events", "csr_entries", "check_item_pairs", "sparse_rows_times", "add_sparse_rows_times", "decayed",
           "distinct_history_items", "recency_weights"]


class ItemPairs:
    """The state of a term that is one CSR matrix of same-domain item pairs (n_items+1, n_items+1): ``indptr``,
    ``indices`` (int32: half the artifact size) and ``values``, on the catalog's device. Mixed into a
    :class:`~crossrec.rerank.base.ScoreTerm`, before it; ``pairs_name`` names the pairs in errors. Setting the
    pairs (fit or load) drops the term's cached per-domain tables (``_tables``)."""

    pairs_name = "item pairs"

    def state_dict(self) -> dict[str, Tensor]:
        return {"indptr": self.indptr, "indices": self.indices, "values": self.values}

    def load_state_dict(self, state: Mapping[str, Tensor], catalog: "Catalog") -> None:
        self._set(state["indptr"], state["indices"], state["values"], catalog)

    def _set(self, indptr: Tensor, indices: Tensor, values: Tensor, catalog: "Catalog") -> None:
        check_item_pairs(indptr, indices, values, catalog.item_domain, self.pairs_name)
        self.catalog = catalog
        self.indptr = indptr.long().to(catalog.device)
        self.indices = indices.int().to(catalog.device)
        self.values = values.float().to(catalog.device)
        self._tables: dict[int, Tensor] = {}  # per-domain tables a term builds from the pairs: stale now
