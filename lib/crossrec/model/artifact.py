"""Model files, no pickle anywhere: the Transformer's weights (:func:`save_model` / :func:`load_model`) and a whole
artifact folder (:func:`save_artifact` / :func:`load_artifact`).

An artifact folder (``crossrec train`` writes ``<lake>/models/<model_version>/``; evaluate and score read it)::

    model.safetensors + config.json          the Transformer alone: weights (wrapper prefixes such as DDP's ``module.``
                                             stripped) and its ModelConfig; the item features are buffers, so the
                                             model is self-contained
    terms.json + terms/<name>.safetensors    the score terms fitted after training (crossrec.rerank.base.TermSet),
                                             when there are any
    item_index.parquet                       item_idx, domain, item_id, domain_idx, domain_item_idx
    entities.json                            the entity vocabulary (entity id k names entry k - 1), when the model
                                             has entities
    metrics.json                             what the model was selected on, the term fit's report under "terms", ...
    MLmodel                                  added when the folder is registered: the pyfunc flavour (crossrec.model.pyfunc)

A training checkpoint holds the model files only (crossrec.train.checkpoint.write_checkpoint).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from crossrec import columns as C
from crossrec.model.config import ModelConfig
from crossrec.model.encoder import ItemFeatures
from crossrec.model.transformer import CrossDomainTransformer

if TYPE_CHECKING:
    import pandas as pd

    from crossrec.rerank.base import TermSet

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ITEM_INDEX_FILE = "item_index.parquet"
ENTITIES_FILE = "entities.json"
METRICS_FILE = "metrics.json"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def save_model(model: nn.Module, folder: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (wrapper prefixes such as DDP's ``module.`` stripped)."""
    from safetensors.torch import save_file

    inner = _unwrap(model)
    assert isinstance(inner, CrossDomainTransformer), f"expected a CrossDomainTransformer, got {type(inner).__name__}"
    state = {_strip_prefix(k): v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    assert set(state) == set(inner.state_dict()), "state_dict keys do not match the unwrapped model"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "model": type(inner).__name__})
    meta = {"model": type(inner).__name__, "config": dataclasses.asdict(inner.config)}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("saved %s (%d tensors) to %s", type(inner).__name__, len(state), folder)
    return folder


def load_model(folder: str | Path, *, device: str | torch.device = "cpu",
               text_model_path: str | Path | None = None) -> CrossDomainTransformer:
    """Rebuild the model written by :func:`save_model`; returned on ``device`` in eval mode."""
    from safetensors.torch import load_file

    from crossrec.io.lakefs import local_copy

    folder = Path(local_copy(folder))
    meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    assert meta.get("model") == "CrossDomainTransformer", f"{folder / CONFIG_FILE} is not a CrossDomainTransformer config"
    config = ModelConfig.from_dict(meta["config"])
    t = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    offsets = t["domain_offsets"].tolist()
    flat = t["domain_items_flat"]
    features = ItemFeatures(
        text_emb=t.get("item_encoder.text_emb"),
        item_domain=t["item_encoder.item_domain"],
        item_attr=t["item_encoder.item_attr"],
        domain_items=[flat[offsets[k] : offsets[k + 1]] for k in range(len(offsets) - 1)],
        text_tokens=t.get("item_encoder.text_tokens"),
        text_mask=t.get("item_encoder.text_mask"),
        sample_weight=t["sample_weight"],
        item_entities=t.get("item_encoder.item_entities"),
        item_vectors=t.get("item_encoder.item_vectors"),
    )
    model = CrossDomainTransformer(config, features, text_model_path=text_model_path, pretrained_text=False)
    model.load_state_dict(t, strict=True)
    return model.to(device).eval()


@dataclass
class Artifact:
    """A loaded artifact folder.

    Attributes:
        model: the Transformer, in eval mode on the device asked for.
        terms: its fitted score terms on the same device; None when it has none or they were not asked for.
        item_index: ``item_index.parquet`` sorted by item_idx (exactly 1..n_items).
        metrics: ``metrics.json`` ({} when absent).
        entities: the entity vocabulary (``entities.json``): entity id k of ``item_entities`` is ``entities[k - 1]``.
        folder, version: the folder and its name (the model version stamped on recommendations).
    """

    model: CrossDomainTransformer
    terms: "TermSet | None"
    item_index: "pd.DataFrame"
    metrics: dict[str, Any]
    folder: Path
    version: str
    entities: list[str] = dataclasses.field(default_factory=list)


def save_artifact(folder: str | Path, model: nn.Module, terms: "TermSet | None", item_index: "pd.DataFrame",
                  metrics: Mapping[str, Any], entities: list[str] | None = None) -> Path:
    """Write an artifact folder (see the module docstring); ``terms`` None = the model alone."""
    folder = save_model(model, folder)
    n = _unwrap(model).config.n_entities
    assert len(entities or []) == n, f"{len(entities or [])} entity names for a model of {n} entities"
    if n:
        (folder / ENTITIES_FILE).write_text(json.dumps(list(entities)) + "\n", encoding="utf-8")
    if terms is not None:
        terms.save(folder)
    item_index.to_parquet(folder / ITEM_INDEX_FILE, index=False)
    (folder / METRICS_FILE).write_text(json.dumps(dict(metrics), indent=2, default=float) + "\n", encoding="utf-8")
    return folder


def load_artifact(folder: str | Path, device: str | torch.device = "cpu", with_terms: bool = True) -> Artifact:
    """Read an artifact folder; its score terms too unless ``with_terms=False`` (the Transformer alone)."""
    import pandas as pd

    from crossrec.io.lakefs import local_copy
    from crossrec.rerank.base import TERMS_FILE, Catalog, TermSet

    version = str(folder).rstrip("/").rsplit("/", 1)[-1]  # the folder's own name, not its local copy's
    folder = Path(local_copy(folder))
    model = load_model(folder, device=device)
    terms = TermSet.load(folder, Catalog.from_model(model)) if with_terms and (folder / TERMS_FILE).is_file() else None
    index = pd.read_parquet(folder / ITEM_INDEX_FILE).sort_values(C.ITEM_IDX).reset_index(drop=True)
    n = model.config.n_items
    assert len(index) == n and (index.item_idx.values == np.arange(1, n + 1)).all(), (
        f"{folder / ITEM_INDEX_FILE} does not match the model's {n} items")
    metrics_file = folder / METRICS_FILE
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    entities = json.loads((folder / ENTITIES_FILE).read_text(encoding="utf-8")) if model.config.n_entities else []
    assert len(entities) == model.config.n_entities, f"{folder / ENTITIES_FILE} does not match the model's entities"
    return Artifact(model, terms, index, metrics, folder, version, entities)


__all__ = ["save_model", "load_model", "save_artifact", "load_artifact", "Artifact", "WEIGHTS_FILE", "CONFIG_FILE",
           "ITEM_INDEX_FILE", "METRICS_FILE", "ENTITIES_FILE"]
