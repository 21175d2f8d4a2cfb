"""Where model artifacts live: ``<lake>/models/<version>/``, and ``<lake>/models/_latest`` naming the current one.

A version is a plain folder name (``crossrec train`` writes ``YYYYMMDD-<8 hex>``); whatever ``_latest`` or a flag
holds is checked to be one before it is joined into a path, so neither can point outside ``<lake>/models``.
"""
from __future__ import annotations

import os
import re

from crossrec.io.config import ConfigError

LATEST_FILE = "_latest"
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a folder name: no separator, no '..'


def check_version(version: str, where: str) -> str:
    """``version`` when it is a plain folder name, else ConfigError (exit 2) naming ``where`` it came from."""
    if not VERSION_RE.fullmatch(version) or ".." in version:
        raise ConfigError(f"{where}: {version[:80]!r} is not a model version (a folder name such as 20261204-60004e3b)")
    return version


def artifact_folder(lake_uri: str, version: str | None) -> str | None:
    """The artifact folder for ``version`` (a name under ``<lake>/models``, or an artifact folder's own path), or
    the one ``_latest`` names when ``version`` is None; None when there is none yet.

    Raises:
        FileNotFoundError: the named artifact does not exist.
        ConfigError: ``_latest`` or ``version`` is not a plain version name.
    """
    root = f"{lake_uri}/models"
    if version is not None and os.path.isdir(version) and os.path.isfile(os.path.join(version, "config.json")):
        return version
    if version is None:
        latest = os.path.join(root, LATEST_FILE)
        if not os.path.isfile(latest):
            return None
        with open(latest, encoding="utf-8") as fh:
            version = check_version(fh.read().strip(), latest)
    else:
        check_version(version, "--model-version")
    folder = os.path.join(root, version)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model artifact {folder} does not exist")
    return folder


__all__ = ["LATEST_FILE", "VERSION_RE", "check_version", "artifact_folder"]
