"""Files of the download cache, made and opened safely: a private directory, no links followed.

The cache directory is created private (mode 0700, with the parents it lacks)
and refused if another user owns it or group/other can write to it: whoever
can write there could replace a cached checkpoint or plant a link that makes
a download write elsewhere. A link as the cache directory is followed only
if the user made it (a cache on another disk).

Inside it the cache never follows a link it did not make: its files are
opened with ``O_NOFOLLOW``, new ones created with ``O_EXCL`` (mode 0600),
and an entry, partial file, lock or resume record that is a link or not a
regular file is refused with a :class:`CheckpointCacheError` naming it.

The resume record (``<entry>.partial.json``) lets a later process resume a
partial download safely: it keeps the URL, the first answer's length and the
validator of the version the partial file holds — the strong ``ETag``, else
(no ETag at all) a ``Last-Modified`` at least a second before the answer's
``Date`` (RFC 9110: never a weak ETag, never a date where there is an ETag) —
which is sent back as ``If-Range``. A ``206`` continues that version only if
its ``Content-Range`` starts at the bytes held, ends at the last byte of a
file of the recorded length, agrees with its ``Content-Length`` and, where it
names an ETag or Last-Modified, names the recorded one.
"""

from __future__ import annotations

import email.utils
import errno
import json
import logging
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..errors import CheckpointCacheError

logger = logging.getLogger("weightinit")

# Windows lacks these flags (0 there); its mode bits and owners are not checked
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_POSIX = os.name == "posix"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_CACHE_FIX = ("Fix: make that directory writable, or point $WEIGHTINIT_CACHE at a writable "
              "directory.")


def cache_error(url: str, path: Path, err: OSError) -> CheckpointCacheError:
    """The error for a failed file operation on ``path`` in the cache."""
    what = "permission denied" if isinstance(err, PermissionError) else (
        err.strerror or str(err))
    return CheckpointCacheError(f"cannot download {url}: can not write {path} in the download "
                                f"cache ({what}). {_CACHE_FIX}")


# ------------------------------------------------------------------ a private directory


def make_private(directory: Path) -> None:
    """Create ``directory`` and the parents it lacks with mode 0700 (an ``OSError`` if that
    fails; a ``NotADirectoryError`` naming the first one that exists but is no directory)."""
    missing = []
    path = directory
    while not os.path.lexists(path) and path.parent != path:
        missing.append(path)
        path = path.parent
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path))
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: the cache directory itself is checked
        if _POSIX:  # mkdir's mode is masked by the umask: make it exactly 0700
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
            try:
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)


def _writable_by_others(st: os.stat_result) -> str | None:
    """Why another user could write to a directory with this status, or None."""
    if not _POSIX:
        return None
    if st.st_uid not in (os.geteuid(), 0):  # root can write anywhere anyway
        return f"it belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o022:
        return f"group or other users can write to it (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def dir_problem(directory: Path) -> str | None:
    """Why ``directory`` can not hold the cache (others could write to it), or None; an
    ``OSError`` if it can not be examined."""
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):  # the user's own link (to another disk) is followed
        if _POSIX and st.st_uid not in (os.geteuid(), 0):
            return f"it is a symbolic link made by another user (uid {st.st_uid})"
        st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    return _writable_by_others(st)


def ensure_dir(directory: Path, url: str) -> None:
    """Create the cache directory private, or check the existing one; a
    :class:`CheckpointCacheError` naming it if it can not be created or others can write
    to it."""
    try:
        make_private(directory)
        problem = dir_problem(directory)
    except NotADirectoryError as err:
        raise CheckpointCacheError(
            f"cannot download {url}: the cache directory {directory} can not be created because "
            f"{err.filename or directory} is a file, not a directory. Fix: remove or rename that "
            "file, or point $WEIGHTINIT_CACHE at a directory.") from err
    except OSError as err:
        raise cache_error(url, directory, err) from err
    if problem is not None:
        raise CheckpointCacheError(
            f"cannot download {url}: refusing the cache directory {directory}: {problem}, so "
            "others could replace cached checkpoints or plant links in it. Fix: chmod 700 "
            f"{directory} if it is yours, or point $WEIGHTINIT_CACHE at a directory of your "
            "own (weightinit creates it with mode 700).")


# ------------------------------------------------------------------ files the cache made


def regular_file(path: Path, url: str) -> bool:
    """Whether ``path`` exists; a :class:`CheckpointCacheError` if it is a link or not a
    regular file (the cache uses only files it wrote itself)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise cache_error(url, path, err) from err
    if stat.S_ISREG(st.st_mode):
        return True
    kind = "not a regular file"
    if stat.S_ISLNK(st.st_mode):
        try:
            kind = f"a symbolic link (to {os.readlink(path)})"
        except OSError:
            kind = "a symbolic link"
    raise CheckpointCacheError(
        f"cannot download {url}: {path} in the download cache is {kind}; the cache only uses "
        "files it wrote itself and never follows links, so nothing was read or written "
        f"through it. Fix: remove it (rm {path}) and load again; if you did not put it there, "
        "check who can write to the cache directory.")


def open_file(path: Path, url: str, new: bool) -> int:
    """A file descriptor of the cache's own file ``path``, never through a link: created for
    writing (``new``: it must not exist; mode 0600), or opened for reading and writing."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL) if new else os.O_RDWR
    try:
        fd = os.open(path, flags | NOFOLLOW, 0o600)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EEXIST):  # a link or file planted meanwhile
            regular_file(path, url)
        raise cache_error(url, path, err) from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        regular_file(path, url)
    return fd


def remove(path: Path, url: str) -> None:
    """Remove the cache's own file ``path`` if it is there (a link itself, never its target)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise cache_error(url, path, err) from err


# ------------------------------------------------------------------ resume records


def resume_record(part: Path) -> Path:
    """Where the resume record of the partial download ``part`` is kept."""
    return part.with_name(part.name + ".json")


def read_resume(path: Path, url: str) -> dict[str, Any] | None:
    """The resume record at ``path`` for ``url``; None if it is missing, unreadable or for
    another URL (a link there is refused)."""
    if not regular_file(path, url):
        return None
    try:
        with os.fdopen(open_file(path, url, new=False), "rb") as fh:
            data = json.loads(fh.read(1 << 16))
    except CheckpointCacheError:
        raise  # (also an OSError) a link planted after the check: refused, not ignored
    except (OSError, ValueError):
        return None
    length = data.get("length") if isinstance(data, dict) else None
    ok = (isinstance(data, dict) and data.get("url") == url
          and data.get("kind") in ("etag", "last-modified")
          and isinstance(data.get("validator"), str)
          and (length is None or (isinstance(length, int) and length > 0)))
    return data if ok else None


def write_resume(path: Path, url: str, kind: str, validator: str, length: int | None) -> None:
    """Write the resume record at ``path`` as a new file (a link there is refused)."""
    if regular_file(path, url):
        remove(path, url)
    data = {"url": url, "kind": kind, "validator": validator, "length": length}
    with os.fdopen(open_file(path, url, new=True), "wb") as fh:
        fh.write(json.dumps(data).encode())


def discard_partial(part: Path) -> None:
    """Remove a partial download and its resume record (best effort; links themselves)."""
    for path in (part, resume_record(part)):
        try:
            os.unlink(path)
        except OSError:
            pass


def resume_point(url: str, part: Path) -> tuple[int, dict[str, Any] | None]:
    """The size of ``part`` and its resume record if it can be resumed; else ``(0, None)``
    and ``part`` is discarded. A link at either path is refused."""
    has_part = regular_file(part, url)
    record = read_resume(resume_record(part), url)
    have = os.lstat(part).st_size if has_part else 0
    if has_part and record is not None and 0 < have < (record["length"] or math.inf):
        return have, record
    if has_part:
        logger.info("%s: %s can not be resumed (no record of the version it holds); "
                    "downloading the whole file again", url, part)
    discard_partial(part)
    return 0, None


def content_range(resp: Any) -> tuple[int, int, int] | None:
    """``(first, last, length)`` of a response's ``Content-Range: bytes F-L/N``, or None."""
    match = _CONTENT_RANGE.fullmatch((resp.headers.get("Content-Range") or "").strip())
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


def continuation_problem(resp: Any, have: int, record: dict[str, Any]) -> str | None:
    """What is wrong with a ``206`` answer to ``Range: bytes=<have>-``, or None: it must
    continue, to its end, the version the partial file holds."""
    header = resp.headers.get("Content-Range")
    said = f"HTTP 206 with Content-Range {header!r}"
    parsed = content_range(resp)
    if parsed is None:
        return f"asked to resume at byte {have}, the server answered {said}"
    start, end, total = parsed
    if start != have or end + 1 != total:
        return f"asked for bytes {have} to the end, the server answered {said}"
    if record["length"] is not None and total != record["length"]:
        return f"the server answered {said}, but the file had {record['length']} bytes"
    length = resp.headers.get("Content-Length")
    if length is not None and length.strip() != str(end + 1 - start):
        return f"the server answered {said} and Content-Length {length!r}, which disagree"
    name = "ETag" if record["kind"] == "etag" else "Last-Modified"
    now = (resp.headers.get(name) or "").strip()
    if now and now != record["validator"]:
        return (f"the server answered HTTP 206 with {name} {now!r}, but the partial file holds "
                f"{record['validator']!r} (the file changed)")
    return None


def strong_validator(resp: Any) -> tuple[str, str] | None:
    """How ``If-Range`` can name the version of a ``200`` answer: its strong ETag, else (no
    ETag at all) a Last-Modified a second or more before the answer's Date; None if it can
    not (RFC 9110 13.1.5: no weak ETag, and no date where there is an ETag)."""
    etag = (resp.headers.get("ETag") or "").strip()
    if etag:  # a weak ETag may stay the same while the bytes change
        return ("etag", etag) if len(etag) >= 2 and etag[0] == etag[-1] == '"' else None
    modified = (resp.headers.get("Last-Modified") or "").strip()
    try:  # a date is a strong validator only if the file was older than a second then
        age = (email.utils.parsedate_to_datetime(resp.headers.get("Date") or "")
               - email.utils.parsedate_to_datetime(modified)).total_seconds()
    except (TypeError, ValueError):
        return None
    return ("last-modified", modified) if age >= 1 else None
