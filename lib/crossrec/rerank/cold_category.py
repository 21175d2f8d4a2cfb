"""The category term for users new to a domain: their categories in the other domains, carried into this one.

A user with no event of the domain has no taste over its categories of their own. The category term's table
(:func:`crossrec.rerank.category.category_transfer`) says how training users who had a category elsewhere spread over
this domain's categories, so for users new to the domain only::

    f(u, j) = log P(c(j) | u) + log P(j | c(j)),  P(c | u) ~ ALPHA * pi(c) + transfer * m_u(c)

as in :mod:`crossrec.rerank.category`, where ``m_u`` sums the table's rows over every history event (all of them in
other domains). ``transfer`` (how far the carried events outweigh the domain's category shares) and the recency decay
are chosen on validation with the weight.
"""
from __future__ import annotations

from crossrec.rerank.base import DECAY_GRID
from crossrec.rerank.category import CATEGORY_WEIGHT_GRID, CategoryTerm

COLD_TRANSFER_GRID: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0)


class ColdCategoryTerm(CategoryTerm):
    """Users new to the domain: their categories elsewhere carried into the domain's, times the item's share of its
    category (see the module docstring)."""

    name = "cold_category"
    applies_to = "cold"
    order = 45
    weights = CATEGORY_WEIGHT_GRID
    params = {"decay": DECAY_GRID, "transfer": COLD_TRANSFER_GRID}
    neutral = {"decay": 1.0, "transfer": 4.0}


__all__ = ["ColdCategoryTerm", "COLD_TRANSFER_GRID"]
