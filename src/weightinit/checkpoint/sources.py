"""Where checkpoints come from: a scheme registry that turns a reference into a local file.

Built in:

* a plain path (``~`` expanded) or ``file://PATH``;
* ``http://`` / ``https://`` — downloaded once into the cache directory
  (``$WEIGHTINIT_CACHE``, else ``$XDG_CACHE_HOME/weightinit``, else
  ``~/.cache/weightinit``) by :func:`~.downloads.download`: checked to be a
  checkpoint, resumable, bounded in time, once per URL across processes, and
  renamed into place only when complete (and, with ``sha256=``, verified); a
  cached copy is used with no network;
* ``torchvision://NAME`` — the torchvision model-zoo files, from a table
  shipped with weightinit (torchvision itself is not needed).

:func:`checked_file` checks the file a reference resolved to: it exists, it can
be read and, with ``sha256``, it has that hash — for every source, local
paths and ``file://`` included (a hash already verified for the file as it is
now is not computed again; :mod:`.cache` says where that is recorded);
:class:`FileGuard` notices a memory-mapped file being changed while it is read.

Add your own with a decorator::

    >>> @register_scheme("s3")
    ... def fetch_s3(ref: str, sha256: str | None) -> str:
    ...     ...  # download ref to a local file
    ...     return local_path
"""

from __future__ import annotations

import difflib
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from ..errors import (
    CheckpointError,
    CheckpointHashError,
    CheckpointNotFoundError,
    InitKeyError,
    InitTypeError,
)
from .cache import cache_dir as cache_dir
from .cache import cached_path as cached_path
from .cache import unreadable, verified_sha256
from .downloads import check_url, download

Fetcher = Callable[[str, "str | None"], str]
_SCHEMES: dict[str, Fetcher] = {}
#: schemes whose fetcher verifies ``sha256`` itself (and re-downloads a corrupt copy)
_VERIFYING = ("http", "https", "torchvision")
#: seconds :func:`probe` waits for the answer to its HEAD request
PROBE_TIMEOUT = 5.0


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


def torchvision_url(ref: str) -> str:
    """The URL a ``torchvision://NAME`` reference names (a did-you-mean error if none)."""
    name = ref[len("torchvision://"):]
    urls = torchvision_urls()
    if name not in urls:
        close = difflib.get_close_matches(name, list(urls), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise CheckpointNotFoundError(2, f"{ref}: {name!r} is not a torchvision model-zoo "
                                         f"name.{hint}")
    return urls[name]


@register_scheme("torchvision")
def _fetch_torchvision(ref: str, sha256: str | None) -> str:
    return download(torchvision_url(ref), sha256)


@register_scheme("file")
def _fetch_file(ref: str, sha256: str | None) -> str:
    return os.path.expanduser(ref[len("file://"):])


def resolve(source: str, sha256: str | None = None) -> str:
    """Turn a checkpoint reference into a local file path (downloading if needed)."""
    scheme = source.split("://", 1)[0] if "://" in source else None
    if scheme is None:
        return os.path.expanduser(source)
    return _fetcher(source, scheme)(source, sha256)


def _fetcher(source: str, scheme: str) -> Fetcher:
    fetch = _SCHEMES.get(scheme)
    if fetch is None:
        raise CheckpointNotFoundError(2, f"{source}: no handler for the {scheme!r} scheme "
                                         f"(known: {', '.join(sorted(_SCHEMES))}). Fix: "
                                         "register one with @weightinit.register_scheme"
                                         f"({scheme!r}).")
    return fetch


@dataclass(frozen=True)
class Probe:
    """A checkpoint reference as seen without downloading anything (:func:`probe`).

    ``path`` is the local file to read — the file itself, or a URL's copy in
    the cache — or None while the reference still has to be fetched; then
    ``size`` is its size in bytes when a HEAD request told it, and ``why``
    says why it is not known.
    """

    source: str
    path: str | None
    url: str | None = None
    size: int | None = None
    why: str = ""

    @property
    def pending(self) -> bool:
        """The run would fetch it: no local copy exists yet."""
        return self.path is None

    def describe(self) -> str:
        """``'download pending (97.8 MB)'``, or with the reason the size is unknown."""
        if self.size is not None:
            size = (f"{self.size:,} bytes" if self.size < 1_000_000
                    else f"{self.size / 1e6:,.1f} MB")
            return f"download pending ({size})"
        return f"download pending (size unknown: {self.why})" if self.why else \
            "download pending"


def probe(source: str, timeout: float = PROBE_TIMEOUT) -> Probe:
    """Where checkpoint ``source`` is, found without downloading it (for dry runs).

    A local path or ``file://`` is itself. An ``http(s)://`` or ``torchvision://``
    reference is its copy in the cache if there is one, else pending, with the
    size a HEAD request reports within ``timeout`` seconds (a server that does
    not answer only leaves the size unknown). A reference of a scheme the user
    registered is pending: only its handler knows how to fetch it, and calling
    it could download. A malformed URL, an unknown scheme or ``torchvision://``
    name raise what the run would raise.
    """
    scheme = source.split("://", 1)[0] if "://" in source else None
    if scheme is None or (scheme == "file" and _SCHEMES.get("file") is _fetch_file):
        return Probe(source, resolve(source))
    fetch = _fetcher(source, scheme)
    if fetch is _fetch_torchvision:
        url = torchvision_url(source)
    elif fetch in (_fetch_http, _fetch_https):
        url = source
    else:
        return Probe(source, None, source,
                     why=f"its {scheme!r} handler fetches it when the model is initialized")
    check_url(url)
    cached = cached_path(url)
    if cached.is_file() and not cached.is_symlink():
        return Probe(source, str(cached), url)
    size, why = _head_size(url, timeout)
    return Probe(source, None, url, size, why)


def _head_size(url: str, timeout: float) -> tuple[int | None, str]:
    """The ``Content-Length`` a HEAD request of ``url`` reports, or None and why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=timeout) as resp:
            length = (resp.headers.get("Content-Length") or "").strip()
    except urllib.error.HTTPError as err:
        return None, f"HEAD answered HTTP {err.code} {err.reason}"
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
        reason = getattr(err, "reason", None) or err
        return None, f"{urllib.parse.urlsplit(url).netloc} not reached: {reason}"
    return (int(length), "") if length.isdigit() else (None, "the server does not say")


def checked_file(source: str, path: str, sha256: str | None = None, pre: str = "") -> str:
    """``path`` (resolved from ``source``) if it is an existing, readable file; with
    ``sha256``, its hash is checked (downloads were checked by their fetcher)."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(2, f"{pre}{source} can not be found. Fix: check the "
                                         "checkpoint path (relative paths start at the "
                                         f"working directory {os.getcwd()!r})")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise unreadable(f"{pre}{source}", path, err) from err
    scheme = source.split("://", 1)[0] if "://" in source else None
    if sha256 is not None and scheme not in _VERIFYING:
        digest = verified_sha256(path, f"{pre}{source}")
        if digest != sha256.lower():
            raise CheckpointHashError(
                f"{pre}{source}: sha256 is {digest}, expected {sha256} ({path}); it is a "
                "local file, so it can not be downloaded again. Fix: check the file (replace "
                "it with an intact copy) and the expected hash.")
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
