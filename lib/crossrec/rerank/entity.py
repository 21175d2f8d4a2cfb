"""The entity terms: attribute entities (``silver.item_entities``: an author, a director, a brand) that an item shares
with the user's recent items.

The model reads an item's entities as the mean of their embeddings, one part of a ``d_model`` representation trained
for the next item on average: that a user keeps to one author or one brand, item after item and domain after domain,
is a sharp pattern such a low-rank score blurs. These terms state it::

    f(u, j) = c(u, j) / max_j' c(u, j')
    c(u, j) = sum_t r**a(t) * cos(x_t, x_j)

with ``x_i`` item ``i``'s entity vector (``idf(e) = 1 + ln((1 + N) / (1 + df(e)))`` for each of its entities, ``df(e)``
the catalog items that have ``e``, ``N`` the catalog's items: an entity on every item says little) and ``a(t)`` the
events after ``t``. ``entity`` (warm) sums the events of j's domain (another book by the author of a book read);
``cold_entity`` (cold) every event, so for a user new to the domain the events elsewhere (the film of a director whose
book the user read). Like the text terms they need no training events, so they also rank items never seen in
training; they need the model's entity table (a model trained with entities).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Mapping

import torch
from torch import Tensor

from crossrec.rerank.base import DECAY_GRID, Catalog, ScoreTerm
from crossrec.rerank.sparse import recency_weights

if TYPE_CHECKING:
    from crossrec.model.baselines import InteractionData

ENTITY_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
NO_ENTITIES = "the model has no attribute entities (none shared in silver.item_entities, or --no-entities)"


def entity_slot_weights(item_entities: Tensor) -> Tensor:
    """(n_items+1, E) entity ids (0 = none) -> (n_items+1, E) each slot's value in its item's entity vector ``x_i``:
    ``idf(e)`` scaled so that each item's row has unit length; 0 for an empty slot and for an entity's second slot on
    one item (it counts once)."""
    ents = item_entities.long()
    first = ents > 0
    for slot in range(1, ents.shape[1]):
        first[:, slot] &= (ents[:, slot:slot + 1] != ents[:, :slot]).all(1)
    n_items = ents.shape[0] - 1
    df = torch.bincount(ents[first], minlength=int(ents.max()) + 1 if ents.numel() else 1).float()
    idf = 1.0 + torch.log((1.0 + n_items) / (1.0 + df))
    w = torch.where(first, idf[ents], torch.zeros((), device=ents.device))
    return w / w.norm(dim=1, keepdim=True).clamp(min=1e-12)


def entity_vectors(item_entities: Tensor, slot_weights: Tensor | None = None) -> Tensor:
    """(n_items+1, E) entity ids (0 = none) -> the sparse (n_items+1, n_entities+1) unit rows ``x_i`` (idf-weighted,
    each entity once per item; an item without entities keeps a zero row). ``slot_weights``: the ids'
    :func:`entity_slot_weights`, when already computed."""
    w = entity_slot_weights(item_entities) if slot_weights is None else slot_weights
    keep = w > 0
    rows = torch.arange(w.shape[0], device=w.device)[:, None].expand_as(w)[keep]
    n_cols = int(item_entities.max()) + 1 if item_entities.numel() else 1
    return torch.sparse_coo_tensor(torch.stack([rows, item_entities.long()[keep]]), w[keep], (w.shape[0], n_cols),
                                   check_invariants=False).coalesce()


ATTRIBUTION_ROWS = 64  # rows per step of attribute(): its (rows, k, T, E, E) products stay small


class EntityTerm:
    """What the two entity terms share (mixed into a :class:`ScoreTerm`, before it): their grids, the entity vectors
    built from the model's entity table as the whole state, and the sum over a history's events (all of them when
    ``events_of_domain`` is False)."""

    weights = ENTITY_WEIGHT_GRID
    params = {"decay": DECAY_GRID}
    neutral = {"decay": 1.0}
    events_of_domain: bool

    def unusable(self, catalog: Catalog) -> str | None:
        return None if catalog.item_entities is not None else NO_ENTITIES

    def fit(self, events: "InteractionData", catalog: Catalog) -> None:
        self.load_state_dict({}, catalog)  # the entity table is the whole state: nothing to learn from events

    def load_state_dict(self, state: Mapping[str, Tensor], catalog: Catalog) -> None:
        assert catalog.item_entities is not None, f"{self.name}: {NO_ENTITIES}"
        super().load_state_dict(state, catalog)
        self.slot_weights = entity_slot_weights(catalog.item_entities)  # (n_items+1, E), the values of ``vectors``
        self.vectors = entity_vectors(catalog.item_entities, self.slot_weights)
        # (n_entities+1, n_d) per domain, transposed here: a sparse index_select fails under inference mode (torch 2.15)
        self._domain_vectors = [self.vectors.index_select(0, items).t().coalesce() for items in catalog.domain_items]

    def features(self, item_idx: Tensor, domain: int, decay: float = 1.0) -> Tensor:
        """(B, T) histories -> (B, n_d): ``c(u, j) / max_j' c(u, j')`` (0 for a row whose events share no entity with
        the domain's items)."""
        c, d, B = self.catalog, int(domain), item_idx.shape[0]
        rows, items, w = recency_weights(item_idx, c.item_domain, d if self.events_of_domain else None, decay)
        if rows.numel() == 0:
            return torch.zeros(B, c.domain_size(d), device=item_idx.device)
        history = torch.sparse_coo_tensor(torch.stack([rows, items]), w.float(), (B, self.vectors.shape[0]),
                                          check_invariants=False).coalesce()
        with warnings.catch_warnings():  # sparse @ sparse goes through torch's CSR kernels, which warn they are beta
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            profile = torch.sparse.mm(history, self.vectors)  # (B, n_entities+1): the user's idf-weighted entities
            sums = torch.sparse.mm(profile, self._domain_vectors[d]).to_dense()  # (B, n_d)
        return sums / sums.amax(1, keepdim=True).clamp(min=1e-12)

    def attribute(self, item_idx: Tensor, picked: Tensor, domain: int, decay: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """Which history event and entity support each pick most in this term: (B, T) histories, (B, k) picked item
        ids -> ``(position (B, k) in the history, entity id (B, k), contribution (B, k))``, the contribution being the
        event's part ``decay**a(t) * x_t[e] * x_j[e]`` of ``c(u, j)`` summed over their shared entities (0 where the
        pick shares no entity with an event the term reads; position and entity then mean nothing)."""
        c, ents = self.catalog, self.catalog.item_entities
        read = (item_idx != 0) if not self.events_of_domain else (item_idx != 0) & (c.item_domain[item_idx] == int(domain))
        age = read.flip(1).cumsum(1).flip(1) - 1  # events read after each position
        weight = torch.pow(torch.tensor(float(decay), device=item_idx.device), age.clamp(min=0).float()) * read
        out = []
        for s in range(0, item_idx.shape[0], ATTRIBUTION_ROWS):
            h, p = item_idx[s:s + ATTRIBUTION_ROWS], picked[s:s + ATTRIBUTION_ROWS]
            e_t, w_t = ents[h], self.slot_weights[h] * weight[s:s + ATTRIBUTION_ROWS, :, None]  # (b, T, E)
            e_j, w_j = ents[p], self.slot_weights[p]  # (b, k, E)
            same = (e_j[:, :, None, :, None] == e_t[:, None, :, None, :]) & (e_j[:, :, None, :, None] > 0)
            part = same * w_j[:, :, None, :, None] * w_t[:, None, :, None, :]  # (b, k, T, E_j, E_t)
            per_event = part.sum((-1, -2))  # (b, k, T)
            best, pos = per_event.max(-1)
            at = part.gather(2, pos[:, :, None, None, None].expand(-1, -1, 1, *part.shape[-2:])).squeeze(2).sum(-1)
            out.append((pos, e_j.gather(-1, at.argmax(-1, keepdim=True)).squeeze(-1), best))
        return tuple(torch.cat(x) for x in zip(*out))


class SameDomainEntityTerm(EntityTerm, ScoreTerm):
    """Warm users: entities shared with their recent items of the domain (see the module docstring)."""

    name = "entity"
    applies_to = "warm"
    order = 25
    events_of_domain = True


class ColdEntityTerm(EntityTerm, ScoreTerm):
    """Users new to the domain: entities shared with their recent items of every other domain (see the module
    docstring)."""

    name = "cold_entity"
    applies_to = "cold"
    order = 55
    events_of_domain = False


__all__ = ["EntityTerm", "SameDomainEntityTerm", "ColdEntityTerm", "entity_vectors", "entity_slot_weights",
           "ENTITY_WEIGHT_GRID"]
