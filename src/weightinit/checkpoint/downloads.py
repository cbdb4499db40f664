"""Download a checkpoint into the cache: checked, resumable, bounded in time, once per URL.

:func:`download` keeps a URL's file in the cache (:mod:`.cache` describes its
layout). A download is written to ``<entry>.partial`` and renamed into place
only when it is complete, looks like a checkpoint (a safetensors header, a zip
archive as ``torch.save`` writes, or a pickle) and, with ``sha256=``, has that
hash. An HTML error page, JSON or an empty body is refused, and nothing is cached.

A download interrupted by the network (a dropped connection, a read that
timed out, the deadline) keeps its ``.partial`` file; the next call asks the
server for the rest (``Range: bytes=N-``) and appends it if the server answers
``206`` with the matching ``Content-Range``, else starts over. While a process
downloads a URL it holds the entry's lock, so a second process waits and then
finds the file in the cache.

Time limits: ``timeout`` bounds each socket operation (default 60 s);
``deadline`` bounds the whole call, waiting for the lock included (default
3600 s; ``math.inf`` for none). An interrupted download is resumed by the
next call, so a deadline loses no bytes. :func:`download_limits` sets the
defaults for a block (the command line's ``--timeout``/``--deadline``).
"""

from __future__ import annotations

import contextvars
import hashlib
import http.client
import logging
import math
import os
import re
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CheckpointDownloadError, CheckpointHashError, InitTypeError, InitValueError
from .cache import (
    DownloadLock,
    cache_dir,
    cache_error,
    cached_path,
    clean_stale,
    ensure_dir,
    file_sha256,
    forget,
    remember,
    verified_sha256,
)

logger = logging.getLogger("weightinit")

DEFAULT_TIMEOUT = 60.0
DEFAULT_DEADLINE = 3600.0
_CHUNK = 1 << 20
_HEAD = 16
_LIMITS: contextvars.ContextVar[tuple[float, float]] = contextvars.ContextVar(
    "weightinit_download_limits", default=(DEFAULT_TIMEOUT, DEFAULT_DEADLINE))
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError)


def check_limits(timeout: Any, deadline: Any) -> None:
    """Refuse a ``timeout`` that is not a positive finite number of seconds, or a ``deadline``
    that is not a positive number (``math.inf``: none); None means the default."""
    for name, value, inf_ok in (("timeout", timeout, False), ("deadline", deadline, True)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InitTypeError(f"{name} must be a number of seconds, got "
                                f"{type(value).__name__} {value!r}")
        if not (value > 0 and (math.isfinite(value) or (inf_ok and value == math.inf))):
            raise InitValueError(
                f"{name} must be a positive{'' if inf_ok else ' finite'} number of seconds, "
                f"got {value!r}. Fix: pass e.g. {name}="
                f"{DEFAULT_TIMEOUT if name == 'timeout' else DEFAULT_DEADLINE:g}"
                + (" (or math.inf for no total limit)." if inf_ok else "."))


@contextmanager
def download_limits(timeout: float | None = None,
                    deadline: float | None = None) -> Iterator[None]:
    """Within the block, downloads that name no ``timeout``/``deadline`` use these (None:
    keep the current one)."""
    check_limits(timeout, deadline)
    old = _LIMITS.get()
    token = _LIMITS.set((old[0] if timeout is None else float(timeout),
                         old[1] if deadline is None else float(deadline)))
    try:
        yield
    finally:
        _LIMITS.reset(token)


def check_url(url: str) -> None:
    """Refuse a malformed ``http(s)`` URL with a :class:`CheckpointDownloadError`."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as err:
        raise CheckpointDownloadError(f"cannot download {url!r}: not a valid URL ({err}). Fix: "
                                      "check the URL, e.g. https://host/path/file.pth.") from err
    if parts.scheme not in ("http", "https") or not host:
        raise CheckpointDownloadError(f"cannot download {url!r}: not a valid http(s) URL (no "
                                      "host). Fix: check the URL, e.g. "
                                      "https://host/path/file.pth.")


def looks_like_checkpoint(head: bytes, total: int | None) -> bool:
    """Whether the first bytes of a file are those of a checkpoint."""
    if head.startswith(b"PK\x03\x04"):  # zip: torch.save's format
        return True
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle (legacy torch.save)
        return True
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        size = struct.unpack("<Q", head[:8])[0]
        return 2 <= size <= 100_000_000 and (total is None or size + 8 <= total)
    return False


def describe(head: bytes, total: int) -> str:
    """What the first bytes of a response are, for an error message."""
    if total == 0:
        return "received an empty response"
    text = head.lstrip()
    if text[:1] == b"<":
        return "received an HTML page"
    if text[:1] in (b"{", b"["):
        return "received JSON"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"received {total} bytes of text"
    return f"received {total} bytes that are not a checkpoint (starting {head[:8].hex()})"


def download(url: str, sha256: str | None = None, timeout: float | None = None,
             deadline: float | None = None) -> str:
    """Download ``url`` into the cache once (checked, resumable, optionally verified) and
    return the local path; see the module documentation. ``timeout``/``deadline`` default
    to those of :func:`download_limits` (60 s per read, 3600 s in all)."""
    check_url(url)
    check_limits(timeout, deadline)
    limits = _LIMITS.get()
    timeout = limits[0] if timeout is None else float(timeout)
    deadline = limits[1] if deadline is None else float(deadline)
    deadline_at = None if deadline == math.inf else time.monotonic() + deadline
    expected = sha256.lower() if sha256 is not None else None
    target = cached_path(url)
    clean_stale(target.parent)
    if target.is_file() and (expected is None or verified_sha256(target, url) == expected):
        return str(target)
    ensure_dir(target.parent, url)
    with DownloadLock(target.with_name(target.name + ".lock"), url, deadline_at):
        bad = None
        if target.is_file():  # downloaded meanwhile, or a cached copy with another hash
            bad = verified_sha256(target, url) if expected is not None else None
            if bad is None or bad == expected:
                return str(target)
            logger.warning("%s: cached copy %s has sha256 %s, expected %s; downloading it "
                           "again", url, target, bad, expected)
            try:
                target.unlink()
            except OSError as err:
                raise cache_error(url, target, err) from err
            forget(target)
        part = target.with_name(target.name + ".partial")
        digest = _fetch(url, part, timeout, deadline, deadline_at)
        if expected is not None and digest != expected:
            _discard(part)
            again = (f" The cached copy {target} had sha256 {bad}; it was deleted and "
                     "downloaded again, with the same result." if bad else "")
            raise CheckpointHashError(
                f"{url}: sha256 is {digest}, expected {expected} (the downloaded file).{again} "
                f"Nothing was kept in the cache ({target}). Fix: check the URL and the expected "
                "hash.")
        try:
            os.replace(part, target)
        except OSError as err:
            raise cache_error(url, target, err) from err
        if expected is not None:
            remember(target, digest)
        logger.info("downloaded %s to %s", url, target)
        return str(target)


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _fetch(url: str, part: Path, timeout: float, deadline: float,
           deadline_at: float | None, retried: bool = False) -> str:
    """Download ``url`` into ``part`` (resuming what it holds); returns the whole file's
    sha256. A rejected response removes ``part``; an interrupted one keeps it."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    wait = timeout if deadline_at is None else max(0.01, min(timeout,
                                                            deadline_at - time.monotonic()))
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=wait)
    except urllib.error.HTTPError as err:
        if have and err.code == 416 and not retried:  # the partial file is of another version
            _discard(part)
            return _fetch(url, part, timeout, deadline, deadline_at, True)
        raise CheckpointDownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}. "
                                      "Fix: check the URL.") from err
    except _NETWORK_ERRORS as err:
        raise _interrupted(url, err, part) from err
    with resp:
        start = _start(url, resp, have)
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        digest = hashlib.sha256()
        head = b""
        if start:
            with open(part, "rb") as fh:
                for chunk in iter(lambda: fh.read(_CHUNK), b""):
                    head = head or chunk[:_HEAD]
                    digest.update(chunk)
        received = start
        bar = _progress(total, part.name.removesuffix(".partial"))
        try:
            out = open(part, "ab" if start else "wb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise cache_error(url, part, err) from err
        checked = False
        try:
            with out:
                while True:
                    try:
                        chunk = resp.read1(_CHUNK)
                    except _NETWORK_ERRORS as err:
                        raise _interrupted(url, err, part, received, total) from err
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError as err:
                        raise cache_error(url, part, err) from err
                    digest.update(chunk)
                    received += len(chunk)
                    if len(head) < _HEAD:
                        head += chunk[:_HEAD - len(head)]
                    if not checked and len(head) >= _HEAD:
                        _check_head(url, resp.status, head, total or received, part, total)
                        checked = True
                    if bar is not None:
                        bar[0].update(bar[1], completed=received)
                    if deadline_at is not None and time.monotonic() > deadline_at:
                        raise CheckpointDownloadError(
                            f"cannot download {url}: it did not finish within deadline="
                            f"{deadline:g} s ({_bytes(received, total)} received; kept in "
                            f"{part}, the next call resumes from there). Fix: pass a larger "
                            "deadline= (or --deadline), or check the network.")
        finally:
            if bar is not None:
                bar[0].stop()
        if total is not None and received < total:
            raise _interrupted(url, None, part, received, total)
        if not checked:
            _check_head(url, resp.status, head, received, part, total)
    return digest.hexdigest()


def _start(url: str, resp: Any, have: int) -> int:
    """Where the body of ``resp`` starts in the file: ``have`` for a matching 206, else 0."""
    if resp.status == 206 and have:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)",
                             (resp.headers.get("Content-Range") or "").strip())
        if match and int(match.group(1)) == have:
            return have
        raise CheckpointDownloadError(
            f"cannot download {url}: asked to resume at byte {have}, the server answered HTTP "
            f"206 with Content-Range {resp.headers.get('Content-Range')!r}. Fix: delete the "
            "partial file and retry.")
    if resp.status != 200:
        raise CheckpointDownloadError(f"cannot download {url}: HTTP {resp.status} "
                                      f"{resp.reason} is not a success with a body. Fix: "
                                      "check the URL.")
    return 0


def _check_head(url: str, status: int, head: bytes, size: int, part: Path,
                total: int | None) -> None:
    if not looks_like_checkpoint(head, total):
        _discard(part)
        raise CheckpointDownloadError(
            f"cannot download {url}: HTTP {status}, but it {describe(head, size)}, not a "
            "checkpoint (safetensors, zip or pickle); nothing was cached. Fix: check the URL "
            "(a login or error page?), or download the file by hand and load it from a path.")


def _bytes(received: int, total: int | None) -> str:
    return f"{received} of {total} bytes" if total is not None else f"{received} bytes"


def _interrupted(url: str, err: BaseException | None, part: Path, received: int = 0,
                 total: int | None = None) -> CheckpointDownloadError:
    what = (f"stopped after {_bytes(received, total)}" if err is None
            else f"{err}" + (f" after {_bytes(received, total)}" if received else ""))
    kept = ""
    if received and part.is_file():
        kept = (f"; the {received} bytes received are kept in {part} and the next call resumes "
                "from there")
    elif part.is_file() and part.stat().st_size == 0:
        _discard(part)
    return CheckpointDownloadError(
        f"cannot download {url}: {what}{kept}. Fix: check the network and retry, pass a larger "
        f"timeout=, or put the file in the cache ({cache_dir()}).")


def _progress(total: int | None, label: str):  # noqa: ANN202 - rich object or None
    if not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        DownloadColumn(), TransferSpeedColumn(), transient=True)
    progress.start()
    task = progress.add_task(label, total=total)
    return progress, task


__all__ = ["DEFAULT_DEADLINE", "DEFAULT_TIMEOUT", "check_limits", "check_url", "describe",
           "download", "download_limits", "file_sha256", "looks_like_checkpoint"]
