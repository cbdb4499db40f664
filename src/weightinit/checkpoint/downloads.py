"""Download a checkpoint into the cache: one version or nothing, bounded in time, once per URL.

:func:`download` keeps a URL's file in the cache (:mod:`.cache` describes its
layout, :mod:`.cachefiles` how it is kept private and never follows links). A
download is written to ``<entry>.partial`` and renamed into place only when it
is complete (as many bytes as the server announced), looks like a checkpoint
(a safetensors header, a zip archive as ``torch.save`` writes, or a pickle)
and, with ``sha256=``, has that hash. An HTML error page, JSON or an empty body
is refused, and nothing is cached. The sha256 of the bytes assembled is
recorded, pinned or not, so a later load notices a cached file that changed.

Resuming: a download interrupted by the network (a dropped connection, a read
that timed out, the deadline) keeps its ``.partial`` file only if the server
named the version it holds (a strong ETag, or a Last-Modified date); the next
call, in any process, asks for the rest with ``Range`` and ``If-Range`` and
appends only a ``206`` that continues that version to its announced end
(:mod:`.cachefiles` lists the checks). Anything else starts over from byte 0:
a ``200`` (the file changed, or ranges are not served), a ``416``, an
inconsistent ``206``, or no validator at all (a weak ``W/`` ETag included).
While a process downloads a URL it holds the entry's lock, so a second
process waits and then finds the file in the cache.

Time limits: ``timeout`` bounds each socket operation (default 60 s);
``deadline`` bounds the whole call, waiting for the lock included (default
3600 s; ``math.inf`` for none). An interrupted download that can be resumed is
resumed by the next call, so a deadline loses no bytes. :func:`download_limits`
sets the defaults for a block (the command line's ``--timeout``/``--deadline``).
"""

from __future__ import annotations

import contextvars
import hashlib
import http.client
import logging
import math
import os
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
    cached_path,
    changed_since_recorded,
    clean_stale,
    file_sha256,
    forget,
    remember,
    verified_sha256,
)
from .cachefiles import (
    cache_error,
    content_range,
    continuation_problem,
    discard_partial,
    ensure_dir,
    open_file,
    regular_file,
    remove,
    resume_point,
    resume_record,
    strong_validator,
    write_resume,
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
    """Download ``url`` into the cache once (one version, verified) and return the local
    path; see the module documentation. ``timeout``/``deadline`` default to those of
    :func:`download_limits` (60 s per read, 3600 s in all)."""
    check_url(url)
    check_limits(timeout, deadline)
    limits = _LIMITS.get()
    timeout = limits[0] if timeout is None else float(timeout)
    deadline = limits[1] if deadline is None else float(deadline)
    deadline_at = None if deadline == math.inf else time.monotonic() + deadline
    expected = sha256.lower() if sha256 is not None else None
    target = cached_path(url)
    ensure_dir(target.parent, url)
    clean_stale(target.parent)
    if _cached(target, url, expected)[0]:
        return str(target)
    with DownloadLock(target.with_name(target.name + ".lock"), url, deadline_at):
        usable, bad = _cached(target, url, expected)  # downloaded meanwhile?
        if usable:
            return str(target)
        if bad is not None:  # a cached copy with another hash
            logger.warning("%s: cached copy %s %s; downloading it again", url, target, bad[1])
            remove(target, url)
            forget(target)
        part = target.with_name(target.name + ".partial")
        digest = _fetch(url, part, timeout, deadline, deadline_at)
        if expected is not None and digest != expected:
            discard_partial(part)
            again = (f" The cached copy {target} had sha256 {bad[0]}; it was deleted and "
                     "downloaded again, with the same result." if bad else "")
            raise CheckpointHashError(
                f"{url}: sha256 is {digest}, expected {expected} (the downloaded file).{again} "
                f"Nothing was kept in the cache ({target}). Fix: check the URL and the expected "
                "hash.")
        try:
            os.replace(part, target)
        except OSError as err:
            raise cache_error(url, target, err) from err
        discard_partial(part)  # its resume record
        remember(target, digest)  # what was assembled, so a later load can check it
        logger.info("downloaded %s to %s", url, target)
        return str(target)


def _cached(target: Path, url: str, expected: str | None) -> tuple[bool, tuple[str, str] | None]:
    """Whether the cache entry of ``url`` can be used as it is; else, if there is one, its
    sha256 and what is wrong. With ``expected`` it must have that sha256, without it the
    one recorded when it was downloaded (if recorded). An entry that is a link is refused."""
    if not regular_file(target, url):
        return False, None
    if expected is not None:
        digest = verified_sha256(target, url)
        return digest == expected, (digest, f"has sha256 {digest}, expected {expected}")
    changed = changed_since_recorded(target, url)
    if changed is None:
        return True, None
    return False, (changed[1], f"has sha256 {changed[1]}, not the {changed[0]} recorded when "
                               "it was downloaded (it was changed since)")


def _fetch(url: str, part: Path, timeout: float, deadline: float,
           deadline_at: float | None) -> str:
    """Download ``url`` into ``part``, appending to what it holds only if the server shows
    it is the same version; returns the whole file's sha256. A rejected response removes
    ``part``; an interrupted one keeps it only if it can be resumed."""
    have, record = resume_point(url, part)
    resp = None
    if record is not None:
        resp = _request(url, {"Range": f"bytes={have}-", "If-Range": record["validator"]},
                        part, timeout, deadline_at, have)
        if resp is not None and resp.status == 206:
            problem = continuation_problem(resp, have, record)
            if problem is not None:
                logger.warning("%s: %s; downloading the whole file again", url, problem)
                resp.close()
                resp = None
        if resp is None or resp.status != 206:  # a 200 is the whole file, of today's version
            discard_partial(part)
            have, record = 0, None
    if resp is None:
        resp = _request(url, {}, part, timeout, deadline_at, 0)
    with resp:
        if record is not None:
            total = content_range(resp)[2]
            fd = open_file(part, url, new=False)
            resumable = True
        else:
            if resp.status != 200:
                raise CheckpointDownloadError(f"cannot download {url}: HTTP {resp.status} "
                                              f"{resp.reason} is not a success with a body. "
                                              "Fix: check the URL.")
            length = (resp.headers.get("Content-Length") or "").strip()
            total = int(length) if length.isdigit() else None
            validator = strong_validator(resp)
            if validator is not None:  # written first, so an interrupted download can resume
                write_resume(resume_record(part), url, validator[0], validator[1], total)
            fd = open_file(part, url, new=True)
            resumable = validator is not None
        return _receive(url, resp, fd, part, have, total, resumable, deadline, deadline_at)


def _request(url: str, headers: dict[str, str], part: Path, timeout: float,
             deadline_at: float | None, have: int) -> Any:
    """The response to a GET of ``url``; None for a ``416`` to a request resuming after
    ``have`` bytes (the partial file is of another version)."""
    wait = timeout if deadline_at is None else max(0.01, min(timeout,
                                                            deadline_at - time.monotonic()))
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=wait)
    except urllib.error.HTTPError as err:
        if have and err.code == 416:
            err.close()
            return None
        raise CheckpointDownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}. "
                                      "Fix: check the URL.") from err
    except _NETWORK_ERRORS as err:
        raise _interrupted(url, err, part, have, None, resumable=bool(have)) from err


def _receive(url: str, resp: Any, fd: int, part: Path, have: int, total: int | None,
             resumable: bool, deadline: float, deadline_at: float | None) -> str:
    """Append the body of ``resp`` to ``part`` (open as ``fd``, holding ``have`` bytes) and
    return the whole file's sha256; the file must end with exactly ``total`` bytes if known."""
    digest = hashlib.sha256()
    head = b""
    received = have
    checked = False
    with os.fdopen(fd, "r+b" if have else "wb") as out:
        if have:
            for chunk in iter(lambda: out.read(_CHUNK), b""):
                head = head or chunk[:_HEAD]
                digest.update(chunk)
        bar = _progress(total, part.name.removesuffix(".partial"))
        try:
            while True:
                try:
                    chunk = resp.read1(_CHUNK)
                except _NETWORK_ERRORS as err:
                    raise _interrupted(url, err, part, received, total, resumable) from err
                if not chunk:
                    break
                if total is not None and received + len(chunk) > total:
                    discard_partial(part)
                    raise CheckpointDownloadError(
                        f"cannot download {url}: the server sent more than the {total} bytes "
                        "it announced; nothing was kept in the cache. Fix: retry; if it "
                        "happens again, download the file by hand and load it from a path.")
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
                        f"{deadline:g} s ({_bytes(received, total)} received"
                        f"{_kept(part, received, resumable)}). Fix: pass a larger deadline= "
                        "(or --deadline), or check the network.")
        finally:
            if bar is not None:
                bar[0].stop()
        if total is not None and received < total:
            raise _interrupted(url, None, part, received, total, resumable)
        if not checked:
            _check_head(url, resp.status, head, received, part, total)
        out.flush()
        size = os.fstat(out.fileno()).st_size
    if size != received:  # the cache directory is private: only another bug could do this
        discard_partial(part)
        raise CheckpointDownloadError(
            f"cannot download {url}: {part} holds {size} bytes, not the {received} assembled; "
            "nothing was kept. Fix: make sure nothing else writes to the cache, and retry.")
    return digest.hexdigest()


def _check_head(url: str, status: int, head: bytes, size: int, part: Path,
                total: int | None) -> None:
    if not looks_like_checkpoint(head, total):
        discard_partial(part)
        raise CheckpointDownloadError(
            f"cannot download {url}: HTTP {status}, but it {describe(head, size)}, not a "
            "checkpoint (safetensors, zip or pickle); nothing was cached. Fix: check the URL "
            "(a login or error page?), or download the file by hand and load it from a path.")


def _bytes(received: int, total: int | None) -> str:
    return f"{received} of {total} bytes" if total is not None else f"{received} bytes"


def _kept(part: Path, received: int, resumable: bool) -> str:
    """What became of the bytes received, for a message (discarded if not resumable)."""
    if resumable and received and os.path.isfile(part):
        return (f"; the {received} bytes received are kept in {part} and the next call "
                "resumes from there if the file did not change")
    discard_partial(part)
    if received:
        return ("; the server names no version to resume by (a strong ETag or Last-Modified), "
                "so nothing was kept and the next call starts over")
    return ""


def _interrupted(url: str, err: BaseException | None, part: Path, received: int,
                 total: int | None, resumable: bool) -> CheckpointDownloadError:
    what = (f"stopped after {_bytes(received, total)}" if err is None
            else f"{err}" + (f" after {_bytes(received, total)}" if received else ""))
    return CheckpointDownloadError(
        f"cannot download {url}: {what}{_kept(part, received, resumable)}. Fix: check the "
        f"network and retry, pass a larger timeout=, or put the file in the cache "
        f"({cache_dir()}).")


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
