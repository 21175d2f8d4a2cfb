"""The popularity term for users new to a domain.

A user whose history (the model's input window) holds no event of the target domain (cross-domain cold start) gets
nothing from the warm terms, and the Transformer's state for such a user, read from other domains' events only,
ranks popular items too low. For those users only::

    f(u, j) = pop(j) = log(1 + training events of j), standardised over j's domain
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
from torch import Tensor

from crossrec.rerank.base import Catalog, ScoreTerm

if TYPE_CHECKING:
    from crossrec.model.baselines import InteractionData

COLD_POPULARITY_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 1.0)


def popularity_feature(data: "InteractionData") -> Tensor:
    """(n_items+1,) float32: ``log(1 + training events of item j)``, standardised over the items of j's domain (mean 0,
    standard deviation 1; 0 for a domain whose items are all equally frequent); 0 for the padding id."""
    f = np.log1p(np.bincount(data.item, minlength=data.n_items + 1).astype(np.float64))
    out = np.zeros(data.n_items + 1, dtype=np.float32)
    for items in data.domain_items:
        v = f[items]
        sd = v.std()
        out[items] = (v - v.mean()) / sd if sd > 0 else 0.0
    return torch.from_numpy(out)


class ColdPopularityTerm(ScoreTerm):
    """Users new to the domain: the item's standardised log popularity (see the module docstring)."""

    name = "cold_popularity"
    collaborative = True
    applies_to = "cold"
    order = 40
    weights = COLD_POPULARITY_GRID

    def fit(self, events: "InteractionData", catalog: Catalog) -> None:
        self.load_state_dict({"popularity": popularity_feature(events)}, catalog)

    def state_dict(self) -> dict[str, Tensor]:
        return {"popularity": self.popularity}

    def load_state_dict(self, state: Mapping[str, Tensor], catalog: Catalog) -> None:
        pop = state["popularity"]
        assert pop.shape == (catalog.n_items + 1,), f"popularity must be ({catalog.n_items + 1},), got {tuple(pop.shape)}"
        self.catalog = catalog
        self.popularity = pop.float().to(catalog.device)

    def features(self, item_idx: Tensor, domain: int) -> Tensor:
        """(B, T) histories -> (B, n_d): every row the domain's ``pop`` (it does not depend on the history)."""
        pop = self.popularity[self.catalog.domain_items[int(domain)]]  # (n_d,)
        return pop[None, :].expand(item_idx.shape[0], -1)


__all__ = ["ColdPopularityTerm", "popularity_feature", "COLD_POPULARITY_GRID"]
