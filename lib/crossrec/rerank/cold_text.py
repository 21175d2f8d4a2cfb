"""The text term for users new to a domain: cosines between the domain's items and the user's recent events in *any*
domain.

The popularity term ranks the same items for every new user. When the model has a frozen text table, this term links
what the user did elsewhere to this domain's items through the text encoder::

    f(u, j) = sum_t r**a(t) * cos(e_t, e_j)

over every history event ``t`` (for a user new to the domain all of them are in other domains; ``a(t)`` the events
after ``t``).
"""
from __future__ import annotations

from torch import Tensor

from crossrec.rerank.base import ScoreTerm
from crossrec.rerank.sparse import recency_weights
from crossrec.rerank.text_similarity import TextTerm, text_vectors


class ColdTextTerm(TextTerm, ScoreTerm):
    """Users new to the domain: recency-weighted text cosines to all their events (see the module docstring)."""

    name = "cold_text"
    applies_to = "cold"
    order = 50

    def features(self, item_idx: Tensor, domain: int, decay: float = 1.0) -> Tensor:
        """(B, T) histories -> (B, n_d): ``sum_t decay**a(t) * cos(e_t, e_j)`` over every history event."""
        c = self.catalog
        rows, items, w = recency_weights(item_idx, c.item_domain, None, decay)
        return text_vectors(rows, items, w, item_idx.shape[0], c.text_units) @ c.domain_text_units(domain).T


__all__ = ["ColdTextTerm"]
