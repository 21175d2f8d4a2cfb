"""A recommendation's reason as a person reads it, from the reason columns of ``gold.recommendations``.

``reason_kind`` says how to render (:data:`crossrec.score.topk.REASON_KINDS`): ``history_item`` names the history item
that most supports the pick, ``shared_entity`` also the attribute entity the two share (an author, a brand),
``popularity`` a user without usable history.
"""
from __future__ import annotations

from typing import Mapping


def reason_text(domain: str, reason: str, reason_kind: str, reason_entity: str | None,
                titles: Mapping[tuple[str, str], str]) -> str:
    """One line such as ``same person (ada berg) as "The Last Alpine" in books``; ``titles``: (domain, item_id) ->
    title (an id without a title is shown as it is)."""
    if reason_kind == "popularity" or ":" not in reason:
        return f"popular in {domain}"
    r_domain, r_item = reason.split(":", 1)
    item = f'"{titles.get((r_domain, r_item)) or r_item}" in {r_domain}'
    if reason_kind == "shared_entity" and reason_entity:
        etype, _, value = reason_entity.partition(":")
        return f"same {etype.replace('_', ' ')} ({value}) as {item}"
    return f"because of {item}"


__all__ = ["reason_text"]
