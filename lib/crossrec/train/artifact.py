"""The model artifact a training run leaves (``<model_root>/<model_version>/``, written aside and moved into place;
crossrec.model.artifact.load_artifact reads it; the train stage registers it, crossrec.io.registry)::

    model.safetensors, config.json    the refit's weights (without refit: the best epoch's)
    terms.json, terms/*.safetensors   the score terms (crossrec.rerank) fitted on the validation split after training
    item_index.parquet                item_idx, domain, item_id, domain_idx, domain_item_idx
    entities.json                     the entity vocabulary, when the model has entities
    metrics.json                      selected-on valid metrics, per-epoch history, data versions, timings, the term
                                      fit's report under "terms", the id shrinkage's under "id_shrinkage"
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from crossrec.train.data import TrainingData

if TYPE_CHECKING:
    from crossrec.model.transformer import CrossDomainTransformer
    from crossrec.rerank.base import TermSet

log = logging.getLogger(__name__)


@dataclass
class Tuning:
    """What the validation split chose for a trained model (see :func:`write_artifact`).

    ``terms``: the score terms (:func:`crossrec.rerank.fit.fit_terms`), None = the Transformer alone; ``metrics``: the
    reports to add to metrics.json (``"terms"``, ``"id_shrinkage"``, ``"cold_bias"``); ``id_shrinkage``: the ``k`` of
    :mod:`crossrec.train.id_shrinkage` and ``cold_bias`` the quantile per domain_idx of
    :func:`~crossrec.train.id_shrinkage.choose_cold_bias` (None = the median), both already applied to the model that
    was tuned; ``refit_counts``: (n_items+1,) training events per item of a refit model (train events + validation
    targets), to apply them to it too."""

    terms: "TermSet | None" = None
    metrics: dict = field(default_factory=dict)
    id_shrinkage: float = 0.0
    refit_counts: np.ndarray | None = None
    cold_bias: list[float] | None = None


def write_artifact(folder_root: str | Path, version: str, best_ckpt_dir: str | Path, data: TrainingData,
                   metrics: Mapping, tune: Callable[["CrossDomainTransformer"], Tuning] | None = None,
                   select_dir: str | Path | None = None) -> Path:
    """``<root>/<version>/`` from the checkpoint in ``best_ckpt_dir`` (written aside, then renamed into place).

    The id embeddings of items in no training window (``data.untrained_items``; ``data.refit_untrained`` for a refit
    model) are zeroed first, and item biases, when the model has them, set to their domain's median
    (:meth:`~crossrec.model.transformer.CrossDomainTransformer.clear_id_embeddings`): text scores those items.
    ``tune(model) -> Tuning``: what the validation split chooses (the id shrinkage, the bias of those items, then the
    score terms), with the model of ``select_dir`` (the selected epoch's checkpoint, when ``best_ckpt_dir`` holds a refit
    that learned the validation targets) or else with the saved model; the refit model gets the chosen id shrinkage
    over its own training events, the terms are saved with the model and the reports go to ``metrics.json``."""
    import torch

    from crossrec.model.artifact import load_model, save_artifact
    from crossrec.train.id_shrinkage import shrink_id_embeddings

    root = Path(folder_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    tmp = root / f".{version}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model = load_model(best_ckpt_dir)  # round trip: what is written is what evaluate will load
    untrained = data.untrained_items if select_dir is None else data.refit_untrained
    cleared = model.clear_id_embeddings(torch.from_numpy(untrained))
    metrics = {**metrics, "untrained_items": cleared}
    if cleared:
        log.info("%d item(s) occur in no training window: id embeddings zeroed (item biases, when the model has "
                 "them, at their domain's median), text scores them", cleared)
    terms = None
    if tune is not None:
        chooser = model
        if select_dir is not None:  # validation rows the refit learned would make every choice look useless
            chooser = load_model(select_dir)
            chooser.clear_id_embeddings(torch.from_numpy(data.untrained_items))
        tuned = tune(chooser)
        terms, metrics = tuned.terms, {**metrics, **tuned.metrics}
        if chooser is not model:
            assert tuned.refit_counts is not None or tuned.id_shrinkage == 0, "a refit model's k needs its counts"
            shrink_id_embeddings(model, tuned.refit_counts, tuned.id_shrinkage)
            if tuned.cold_bias is not None:
                model.clear_id_embeddings(torch.from_numpy(untrained), bias_quantile=tuned.cold_bias)
    save_artifact(tmp, model, terms, data.item_index, metrics, data.entities)
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp.rglob("*"):  # safetensors writes 0600; an artifact is read by other jobs and users
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)
    if final.exists():  # the same config on the same data and day: the newer export replaces it
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


__all__ = ["Tuning", "write_artifact"]
