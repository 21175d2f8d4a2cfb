"""Files beside the tables: model artifacts, Ray Train's run storage and validation reports, on the lake's own
filesystem, whatever its scheme.

A lake root is a local folder or a URI (``s3a://bucket/lake``, ``s3://``, ``gs://``, ``hdfs://``...). Spark reads
``s3a://`` through Hadoop's S3A; everything else here goes through pyarrow filesystems, for which ``s3a://`` is
``s3://``. S3 endpoint, region and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_REGION``, ``AWS_ACCESS_KEY_ID``...), the same ones ``deltalake`` (the Spark-free readers) and MLflow read, so
one set of variables serves every client.

Files are written locally first and then copied up (:func:`upload`); readers of a remote folder load a local copy
(:func:`local_copy`, cached per process and folder).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_S3 = ("s3://", "s3a://", "s3n://")
_COPIES: dict[str, str] = {}
_LOCK = threading.Lock()


def is_remote(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` names an object store or another non-local filesystem (``file:`` URIs are local)."""
    text = str(uri)
    return "://" in text and not text.startswith("file:")


def local_path(uri: str | os.PathLike) -> str:
    """A local lake path without its ``file:`` scheme."""
    text = str(uri)
    return text.removeprefix("file://") if text.startswith("file://") else text.removeprefix("file:")


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local folder or a URI alike."""
    return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])


def s3_uri(uri: str) -> str:
    """``s3a://`` and ``s3n://`` as ``s3://``: what pyarrow, Ray and MLflow (boto3) understand."""
    for prefix in _S3[1:]:
        if uri.startswith(prefix):
            return "s3://" + uri[len(prefix):]
    return uri


def s3_endpoint() -> str | None:
    """The S3-compatible store's endpoint the AWS variables name (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def aws_region() -> str | None:
    """``AWS_REGION``, else ``AWS_DEFAULT_REGION``."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def filesystem(uri: str):
    """``(pyarrow filesystem, path inside it)`` for ``uri``. S3 takes its endpoint from ``AWS_ENDPOINT_URL`` (an
    S3-compatible store) and its region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``."""
    from pyarrow import fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    if uri.startswith(_S3):
        endpoint, region = s3_endpoint(), aws_region()
        kwargs = {"region": region} if region else {}
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            kwargs["scheme"] = "http" if endpoint.startswith("http://") else "https"
            kwargs["force_virtual_addressing"] = False
        return pafs.S3FileSystem(**kwargs), s3_uri(uri).removeprefix("s3://")
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    """Whether a file is at ``uri``."""
    from pyarrow import fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def upload(local_folder: str | Path, uri: str) -> str:
    """Copy ``local_folder`` to ``uri`` (a folder; files already there are overwritten); returns ``uri``."""
    from pyarrow import fs as pafs

    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local_folder), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    log.info("copied %s to %s", local_folder, uri)
    return uri


def delete_folder(uri: str) -> None:
    """Remove the folder ``uri`` and everything in it (nothing when it is not there)."""
    from pyarrow import fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def local_copy(uri: str | Path) -> str:
    """A local folder holding the files of the folder ``uri``: ``uri`` itself when it is local, else a copy in
    ``$CROSSREC_CACHE_DIR`` (default: the system's temp folder), named by the URI and its files' sizes and times (a
    folder rewritten in place gets a new copy), made once per process. A copy is written aside and renamed into
    place, so a reader never sees half of one."""
    from pyarrow import fs as pafs

    text = str(uri)
    if not is_remote(text):
        return local_path(text)
    with _LOCK:
        if text in _COPIES and os.path.isdir(_COPIES[text]):
            return _COPIES[text]
        fs, path = filesystem(text)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"{text}: no such folder")
        files = sorted((f.path, f.size, str(f.mtime)) for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)))
        root = Path(os.environ.get("CROSSREC_CACHE_DIR") or tempfile.gettempdir(), "crossrec-artifacts")
        name = text.rstrip("/").rsplit("/", 1)[-1]
        dest = root / f"{name}-{hashlib.sha1(repr((text, files)).encode()).hexdigest()[:12]}"
        if not dest.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=_mkdir(root)))
            pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            try:
                os.replace(tmp, dest)
            except OSError:  # another process put its copy in place first
                shutil.rmtree(tmp, ignore_errors=True)
            log.info("copied %s to %s", text, dest)
        _COPIES[text] = str(dest)
        return str(dest)


def _mkdir(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


__all__ = ["is_remote", "local_path", "join", "s3_uri", "filesystem", "exists", "upload", "delete_folder",
           "local_copy"]
