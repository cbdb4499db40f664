"""Where checkpoints come from: a scheme registry that turns a reference into a local file.

Built in:

* a plain path (``~`` expanded) or ``file://PATH``;
* ``http://`` / ``https://`` — downloaded once into the cache directory
  (``$WEIGHTINIT_CACHE``, else ``$XDG_CACHE_HOME/weightinit``, else
  ``~/.cache/weightinit``), written to a temporary file and renamed into
  place only when complete (and, with ``sha256=``, verified), so no partial
  file is ever left in the cache; a cached copy is used with no network;
* ``torchvision://NAME`` — the torchvision model-zoo files, from a table
  shipped with weightinit (torchvision itself is not needed).

:func:`checked_file` checks the file a reference resolved to (it exists; with
``sha256``, a local file's hash);
:class:`FileGuard` notices a memory-mapped file being changed while it is read.

Add your own with a decorator::

    >>> @register_scheme("s3")
    ... def fetch_s3(ref: str, sha256: str | None) -> str:
    ...     ...  # download ref to a local file
    ...     return local_path
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ..errors import (
    CheckpointDownloadError,
    CheckpointError,
    CheckpointHashError,
    CheckpointNotFoundError,
    InitKeyError,
    InitTypeError,
)

logger = logging.getLogger("weightinit")

Fetcher = Callable[[str, "str | None"], str]
_SCHEMES: dict[str, Fetcher] = {}
_CHUNK = 1 << 20


def register_scheme(scheme: str, force: bool = False) -> Callable[[Fetcher], Fetcher]:
    """Register ``fetch(ref, sha256) -> local path`` for references ``SCHEME://...``."""
    if not isinstance(scheme, str) or not scheme.isidentifier():
        raise InitTypeError(f"scheme must be a name like 's3', got {scheme!r}")

    def decorator(fetch: Fetcher) -> Fetcher:
        if scheme in _SCHEMES and not force and _SCHEMES[scheme] is not fetch:
            raise InitKeyError(f"checkpoint scheme {scheme!r} is already registered. Fix: pass "
                               "force=True to replace it.")
        _SCHEMES[scheme] = fetch
        return fetch

    return decorator


def cache_dir() -> Path:
    """Where downloads are kept: ``$WEIGHTINIT_CACHE`` or the XDG cache directory."""
    if os.environ.get("WEIGHTINIT_CACHE"):
        return Path(os.environ["WEIGHTINIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "weightinit"


def cached_path(url: str) -> Path:
    """The cache file of a URL: its file name, prefixed by a short hash of the whole URL."""
    name = os.path.basename(url.split("?", 1)[0]) or "checkpoint"
    return cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(total: int | None, label: str):  # noqa: ANN202 - rich object or None
    if not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        DownloadColumn(), TransferSpeedColumn(), transient=True)
    progress.start()
    task = progress.add_task(label, total=total)
    return progress, task


def download(url: str, sha256: str | None = None, timeout: float = 60.0) -> str:
    """Download ``url`` into the cache once (atomically, optionally verified) and return the path."""
    target = cached_path(url)
    if target.is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".partial-", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    bar = None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            expected = int(total) if total and total.isdigit() else None
            bar = _progress(expected, os.path.basename(str(target)))
            received = 0
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar[0].update(bar[1], completed=received)
            if expected is not None and received != expected:
                raise CheckpointDownloadError(
                    f"download of {url} stopped after {received} of {expected} bytes. Fix: "
                    "retry; nothing was kept in the cache.")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise CheckpointHashError(
                f"{url}: sha256 is {digest.hexdigest()}, expected {sha256}. The file was "
                "discarded. Fix: check the URL and the expected hash.")
        os.replace(tmp, target)
        logger.info("downloaded %s to %s", url, target)
        return str(target)
    except urllib.error.HTTPError as err:
        raise CheckpointDownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}. "
                                      "Fix: check the URL.") from err
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
            TimeoutError) as err:
        raise CheckpointDownloadError(f"cannot download {url}: {err}. Fix: check the network, "
                                      "or put the file in the cache "
                                      f"({cache_dir()}).") from err
    finally:
        if bar is not None:
            bar[0].stop()
        if tmp.exists():
            tmp.unlink()


@register_scheme("http")
def _fetch_http(ref: str, sha256: str | None) -> str:
    return download(ref, sha256)


@register_scheme("https")
def _fetch_https(ref: str, sha256: str | None) -> str:
    return download(ref, sha256)


def torchvision_urls() -> dict[str, str]:
    """Model-zoo name -> URL of torchvision's ImageNet checkpoints."""
    text = resources.files(__package__).joinpath("torchvision.json").read_text()
    return json.loads(text)


@register_scheme("torchvision")
def _fetch_torchvision(ref: str, sha256: str | None) -> str:
    name = ref[len("torchvision://"):]
    urls = torchvision_urls()
    if name not in urls:
        close = difflib.get_close_matches(name, list(urls), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise CheckpointNotFoundError(2, f"{ref}: {name!r} is not a torchvision model-zoo "
                                         f"name.{hint}")
    return download(urls[name], sha256)


@register_scheme("file")
def _fetch_file(ref: str, sha256: str | None) -> str:
    return os.path.expanduser(ref[len("file://"):])


def resolve(source: str, sha256: str | None = None) -> str:
    """Turn a checkpoint reference into a local file path (downloading if needed)."""
    scheme = source.split("://", 1)[0] if "://" in source else None
    if scheme is None:
        return os.path.expanduser(source)
    fetch = _SCHEMES.get(scheme)
    if fetch is None:
        raise CheckpointNotFoundError(2, f"{source}: no handler for the {scheme!r} scheme "
                                         f"(known: {', '.join(sorted(_SCHEMES))}). Fix: "
                                         "register one with @weightinit.register_scheme"
                                         f"({scheme!r}).")
    return fetch(source, sha256)


def checked_file(source: str, path: str, sha256: str | None = None, pre: str = "") -> str:
    """``path`` (resolved from ``source``) if it is an existing file; with ``sha256``, a
    local file's hash is checked."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(2, f"{pre}{source} can not be found. Fix: check the "
                                         "checkpoint path (relative paths start at the "
                                         f"working directory {os.getcwd()!r})")
    if sha256 is not None and "://" not in source:
        digest = _sha256_of(Path(path))
        if digest != sha256.lower():
            raise CheckpointHashError(f"{pre}{source}: sha256 is {digest}, expected "
                                      f"{sha256}. Fix: check the file and the expected hash.")
    return path


class FileGuard:
    """Identity of a memory-mapped checkpoint file when it was opened.

    Reading a mapped page of a file that was truncated since kills the process
    with ``SIGBUS``; :meth:`check` turns that (and a rewrite in place) into a
    :class:`CheckpointError` before the read. A file *replaced* (renamed over)
    is fine: the mapping still holds the file that was opened and checked.
    """

    def __init__(self, source: str, path: str) -> None:
        self.source = source
        self.path = path
        self.stat = os.stat(path)

    def check(self, key: str) -> None:
        try:
            now = os.stat(self.path)
        except OSError:
            return  # removed: the mapping keeps the opened file alive
        was = self.stat
        if (now.st_dev, now.st_ino) != (was.st_dev, was.st_ino):
            return
        if (now.st_size, now.st_mtime_ns) != (was.st_size, was.st_mtime_ns):
            change = ("truncated" if now.st_size < was.st_size else "rewritten in place")
            raise CheckpointError(
                f"{self.source}: can not read entry {key!r}: the file was {change} after it was "
                f"opened and checked (size {was.st_size} -> {now.st_size} bytes). Fix: do not "
                "modify a checkpoint while it is loaded (write a new file and rename it into "
                "place), then load again.")
