"""Training samples from histories, pure functions (no I/O): windows, cold-domain views, batches.

A ``split=train`` row of ``gold.user_sequences`` holds a user's whole training history ``s``; it is cut into windows
of at most ``max_seq_len + 1`` events, newest first, overlapping by one event, so every next-item target of ``s`` is
predicted exactly once (:func:`training_windows`). A window ``w`` is one sample: inputs ``w[:-1]``, targets ``w[1:]``,
target domain = the domain of the target item. With ``cold_views`` a history spanning several domains also gives,
per domain d, a view whose inputs are the other domains' events and whose targets are the d events that follow them:
the state a user new to d is in. Each worker batches windows of similar length together (:func:`length_bucketed`),
which removes most padding.
"""
from __future__ import annotations

import numpy as np

from crossrec import columns as C


def _chunks(cols: dict[str, list], inputs: dict[str, np.ndarray], targets: np.ndarray, max_seq_len: int) -> None:
    """Append (inputs, targets) cut into windows of at most ``max_seq_len`` positions, newest first; windows
    without a target are skipped."""
    end = len(targets)
    while end > 0:
        start = max(0, end - max_seq_len)
        if targets[start:end].any():
            for k, a in inputs.items():
                cols[k].append(a[start:end])
            cols["target_item_idx"].append(targets[start:end])
        end = start


def training_windows(item_idx, domain_idx, event_ts, max_seq_len: int, *, cold_views: bool = False):
    """Cut histories into training windows (pyarrow.Table of list<int64> columns, one window per row).

    A window holds inputs (``item_idx``, ``domain_idx``, ``event_ts``) and, per position, the item to predict
    there (``target_item_idx``, 0 = none).

    * **Next-item windows**: a history ``s`` of length L <= max_seq_len + 1 is one window (inputs ``s[:-1]``,
      targets ``s[1:]``). A longer one gives windows of max_seq_len + 1 events, newest first, each starting
      one event before the previous one ended, so that every target ``s[1:]`` is predicted exactly once;
      histories shorter than 2 events give nothing.
    * **Cold-domain views** (``cold_views``): for a history with events in two or more domains, one more
      sequence per domain d: the inputs are the events of the *other* domains, and a position's target is the
      next event when that is in d (else none). The model so also learns to predict a domain's items from a
      history without that domain -- exactly what a user new to the domain (the cold-start segment) gives it
      at prediction time; without these views such states occur only before a user's first event in d.
      Cut newest first into non-overlapping windows of at most ``max_seq_len`` positions.
    """
    import pyarrow as pa

    w = max_seq_len + 1
    cols: dict[str, list] = {"item_idx": [], "domain_idx": [], "event_ts": [], "target_item_idx": []}
    for it, dm, ts in zip(item_idx, domain_idx, event_ts):
        it, dm, ts = (np.asarray(a, dtype=np.int64) for a in (it, dm, ts))
        assert len(it) == len(dm) == len(ts), "item_idx, domain_idx and event_ts of a row must have one length"
        end = len(it)
        while end >= 2:
            start = max(0, end - w)
            for k, a in (("item_idx", it), ("domain_idx", dm), ("event_ts", ts)):
                cols[k].append(a[start:end - 1])
            cols["target_item_idx"].append(it[start + 1:end])
            end = start + 1  # the next (older) window's last event is this window's first input
            if start == 0:
                break
        if not cold_views or len(it) < 2:
            continue
        for d in np.unique(dm) if (dm != dm[0]).any() else ():
            keep = np.flatnonzero(dm != d)
            nxt = keep + 1
            has_next = nxt < len(it)
            targets = np.zeros(len(keep), dtype=np.int64)
            hit = has_next.copy()
            hit[has_next] = dm[nxt[has_next]] == d
            targets[hit] = it[nxt[hit]]
            _chunks(cols, {"item_idx": it[keep], "domain_idx": dm[keep], "event_ts": ts[keep]}, targets, max_seq_len)
    typ = pa.list_(pa.int64())
    return pa.table({k: pa.array(v, type=typ) for k, v in cols.items()})


def extend_with_targets(train, valid, item_domain: np.ndarray) -> tuple[list, list, list]:
    """Each user's training history with the user's validation targets merged in by time (pandas rows of
    ``gold.user_sequences``: ``train`` one per user, ``valid`` one per (user, domain) with ``target_item_idx`` and
    ``target_ts``): ``(item_idx, domain_idx, event_ts)`` lists, one entry per user, for :func:`training_windows`.
    A target at the same time as a training event goes after it (targets are a domain's newest events)."""
    events: dict[str, list[np.ndarray]] = {}
    for u, it, ts in zip(train.user_id.values, train.item_idx.values, train.event_ts.values):
        events[u] = [np.asarray(it, dtype=np.int64), np.asarray(ts, dtype=np.int64)]
    targets = valid.groupby(C.USER_ID, sort=False).agg({C.TARGET_ITEM_IDX: list, C.TARGET_TS: list})
    for u, it, ts in zip(targets.index, targets.target_item_idx.values, targets.target_ts.values):
        have = events.get(u, [np.zeros(0, np.int64), np.zeros(0, np.int64)])
        events[u] = [np.concatenate([have[0], np.asarray(it, dtype=np.int64)]),
                     np.concatenate([have[1], np.asarray(ts, dtype=np.int64)])]
    items, domains, times = [], [], []
    for it, ts in events.values():
        order = np.argsort(ts, kind="stable")  # stable: the targets, appended last, follow equal-time events
        items.append(it[order])
        domains.append(item_domain[it[order]])
        times.append(ts[order])
    return items, domains, times



def list_rows(col) -> list[np.ndarray]:
    """A list<int64> column (Array or ChunkedArray) -> one int64 array per row."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.flatten().to_numpy()
    offsets = offsets - offsets[0]  # a sliced array's offsets point into the unsliced values
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(col))]


def collate_train(batch, item_domain: np.ndarray) -> dict[str, np.ndarray]:
    """Training windows (pyarrow.Table, see :func:`training_windows`) -> right-padded (B, T) arrays.

    ``item_idx``, ``domain_idx``, ``event_ts`` (inputs), ``target_item_idx`` (0 = no target) and
    ``target_domain`` = domain of the target item (0 where none); T = the longest window. One scatter per column,
    no loop over rows: it runs at every training step.
    """
    import pyarrow as pa

    keys = ("item_idx", "domain_idx", "event_ts", "target_item_idx")
    cols = {k: batch[k].combine_chunks() if isinstance(batch[k], pa.ChunkedArray) else batch[k] for k in keys}
    offsets = cols["item_idx"].offsets.to_numpy()
    lengths = np.diff(offsets)
    B, T = len(lengths), int(lengths.max(initial=0))
    assert T >= 1, "a training window has at least 1 position"
    rows = np.repeat(np.arange(B), lengths)  # (N,) each value's row
    pos = np.arange(len(rows)) - np.repeat(offsets[:-1] - offsets[0], lengths)  # (N,) its position in the row
    out = {}
    for k, col in cols.items():
        assert np.array_equal(np.diff(col.offsets.to_numpy()), lengths), f"{k}: window lengths differ from item_idx's"
        out[k] = np.zeros((B, T), dtype=np.int64)
        out[k][rows, pos] = col.flatten().to_numpy()  # flatten: the values of this (possibly sliced) array only
    out["target_domain"] = item_domain[out["target_item_idx"]]  # padding: item 0 -> any domain, ignored
    return out


def length_bucketed(pools, batch_size: int, rng: np.random.Generator):
    """Batches of ``batch_size`` windows of similar length from shuffled pools of windows (pyarrow Tables).

    Each pool is sorted by window length (ties in random order), cut into batches, and the batches are
    yielded in random order: a batch is padded to its own longest window, so grouping similar lengths
    removes most of the padding the encoder would otherwise run over (histories are mostly short). A pool
    of ``n`` rows gives ``ceil(n / batch_size)`` batches, so equal shards still give every rank equal steps.
    """
    import pyarrow.compute as pc

    for pool in pools:
        n = pool.num_rows
        lengths = pc.list_value_length(pool["item_idx"]).to_numpy(zero_copy_only=False)
        order = np.lexsort((rng.random(n), lengths))  # by length, random among equals
        chunks = [order[s : s + batch_size] for s in range(0, n, batch_size)]
        for c in rng.permutation(len(chunks)):
            yield pool.take(chunks[c])



__all__ = ["training_windows", "extend_with_targets", "collate_train", "length_bucketed", "list_rows"]
