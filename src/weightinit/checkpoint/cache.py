"""The download cache: file names, the download lock, stale files, and recorded hashes.

Layout of the cache directory (:func:`cache_dir`; :mod:`.cachefiles` says how it
is kept private and why it never follows a link it did not make):

* ``<12 hex>-<name>`` — a finished download, ``<12 hex>`` a hash of the URL and
  ``<name>`` the URL's file name; a name that is long (over 100 characters), has
  characters outside ``[A-Za-z0-9._-]`` or ends like one of the cache's own
  files is replaced by a hash (the checkpoint extension, if any, is kept);
* ``<entry>.partial`` — an interrupted download, resumed by the next call;
  removed once it is a day old and no process is downloading it;
* ``<entry>.partial.json`` — its resume record (the validator sent as ``If-Range``);
* ``<entry>.lock`` — held (``fcntl.flock``) while a process downloads the entry,
  so two processes download a URL once; on platforms without ``fcntl`` there is
  no lock;
* ``.verified/<hash of the absolute path>.json`` — the sha256 of a downloaded
  file (of the bytes assembled, pinned or not) or of a file checked with
  ``sha256=`` (local files too: never beside the user's files), with the file's
  size, mtime, ctime and inode. A later load re-hashes the file only if one of
  those changed. Writing a record is best effort (a read-only cache only costs
  a re-hash); records in a cache directory others can write to are not trusted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import CheckpointDownloadError, CheckpointError
from .cachefiles import NOFOLLOW, cache_error, dir_problem, make_private, regular_file

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

_CHUNK = 1 << 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
CHECKPOINT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_OWN_SUFFIXES = (".partial", ".lock", ".json")
STALE_SECONDS = 24 * 3600


def cache_dir() -> Path:
    """Where downloads are kept: ``$WEIGHTINIT_CACHE`` or the XDG cache directory."""
    if os.environ.get("WEIGHTINIT_CACHE"):
        return Path(os.environ["WEIGHTINIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "weightinit"


def cached_path(url: str) -> Path:
    """The cache file of a URL: its file name, prefixed by a short hash of the whole URL.

    A name that is too long, has unusual characters or could be taken for one of
    the cache's own files is replaced by a hash of the URL (keeping the extension).
    """
    digest = hashlib.sha256(url.encode()).hexdigest()
    name = os.path.basename(url.split("?", 1)[0].split("#", 1)[0]) or "checkpoint"
    if not _SAFE_NAME.fullmatch(name) or name.endswith(_OWN_SUFFIXES) or name in (".", ".."):
        ext = next((e for e in CHECKPOINT_EXTENSIONS if name.lower().endswith(e)), "")
        name = digest[12:40] + ext
    return cache_dir() / f"{digest[:12]}-{name}"


# ------------------------------------------------------------------ the download lock


class DownloadLock:
    """An exclusive lock on ``<entry>.lock`` while a process downloads the entry.

    Waits (polling, so the wait ends at ``deadline_at``, a ``time.monotonic()``
    value or None) while another process holds it. The lock file is removed on
    release; a waiter whose file was removed meanwhile takes the new one.
    """

    def __init__(self, path: Path, url: str, deadline_at: float | None) -> None:
        self.path = path
        self.url = url
        self.deadline_at = deadline_at
        self.fd: int | None = None

    def __enter__(self) -> DownloadLock:
        if fcntl is None:
            return self
        while True:
            fd = self.try_acquire()
            if fd is not None:
                self.fd = fd
                return self
            if self.deadline_at is not None and time.monotonic() > self.deadline_at:
                raise CheckpointDownloadError(
                    f"cannot download {self.url}: another process has been downloading it "
                    f"(lock {self.path}) past the deadline. Fix: wait for it to finish and "
                    "load again, or pass a larger deadline=.")
            time.sleep(0.05)

    def try_acquire(self) -> int | None:
        """The locked file descriptor, or None if another process holds the lock."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600)
        except OSError as err:
            if err.errno == errno.ELOOP:
                regular_file(self.path, self.url)
            raise cache_error(self.url, self.path, err) from err
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            regular_file(self.path, self.url)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        try:
            same = os.lstat(self.path).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if not same:  # released and removed by its holder meanwhile: take the new file
            os.close(fd)
            return self.try_acquire()
        return fd

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file and unlock it."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def clean_stale(directory: Path, now: float | None = None) -> None:
    """Remove stale files of dead downloads (best effort): ``.partial-*`` temporary files of
    older versions and ``*.partial``/``*.partial.json``/``*.lock`` files a day old that no
    process holds."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        suffix = next((s for s in (".partial.json", ".partial", ".lock") if name.endswith(s)),
                      None)
        if not (name.startswith(".partial-") or suffix):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < STALE_SECONDS:
                continue
            if name.startswith(".partial-"):
                os.unlink(entry.path)
                continue
            lock = DownloadLock(Path(entry.path.removesuffix(suffix) + ".lock"), "", None)
            fd = lock.try_acquire() if fcntl is not None else None
            if fcntl is not None and fd is None:
                continue  # a live download
            lock.fd = fd
            try:
                if suffix != ".lock":
                    os.unlink(entry.path)
            finally:
                lock.release()
        except (OSError, CheckpointError):
            continue


# ------------------------------------------------------------------ verified hashes


def _records(create: bool) -> Path | None:
    """The directory of hash records, None where a record could not be trusted (a cache
    directory that others can write to) or, without ``create``, there is none."""
    base = cache_dir()
    records = base / ".verified"
    try:
        if create:
            make_private(records)
        if dir_problem(base) or dir_problem(records):
            return None
    except OSError:
        return None
    return records


def _record_name(path: Path) -> str:
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32] + ".json"


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino, "dev": st.st_dev}


def _read_record(path: Path) -> dict[str, Any] | None:
    records = _records(create=False)
    if records is None:
        return None
    try:
        fd = os.open(records / _record_name(path), os.O_RDONLY | NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = json.loads(fh.read(1 << 16))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("sha256"), str)
    return data if ok else None


def unreadable(label: str, path: Path | str, err: OSError) -> CheckpointError:
    """The error for a checkpoint file that can not be read."""
    if isinstance(err, PermissionError):
        return CheckpointError(f"{label}: permission denied reading {path}. Fix: make the file "
                               f"readable (e.g. chmod u+r {path}) or load it as a user who can "
                               "read it.")
    return CheckpointError(f"{label}: can not read {path} ({err.strerror or err}). Fix: check "
                           "the file and its directory.")


def file_sha256(path: Path | str, label: str) -> str:
    """The sha256 of a file, a :class:`CheckpointError` if it can not be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as err:
        raise unreadable(label, path, err) from err
    return digest.hexdigest()


def verified_sha256(path: Path | str, label: str) -> str:
    """The file's sha256: from its record if the file is unchanged since, else hashed (and
    recorded)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as err:
        raise unreadable(label, path, err) from err
    data = _read_record(path)
    if data is not None and data.get("identity") == _identity(st):
        return data["sha256"]
    digest = file_sha256(path, label)
    remember(path, digest, st)
    return digest


def changed_since_recorded(path: Path, label: str) -> tuple[str, str] | None:
    """``(recorded, actual)`` sha256 of a file whose bytes are no longer those recorded for
    it; None if they are, or there is no record. Hashes only a file changed since its record."""
    data = _read_record(path)
    if data is None:
        return None
    try:
        st = os.stat(path)
    except OSError as err:
        raise unreadable(label, path, err) from err
    if data.get("identity") == _identity(st):
        return None
    digest = file_sha256(path, label)
    if digest != data["sha256"]:
        return data["sha256"], digest
    remember(path, digest, st)  # the same bytes (touched, copied): record the new identity
    return None


def remember(path: Path, digest: str, st: os.stat_result | None = None) -> None:
    """Record that ``path`` (as it is now, or as ``st`` saw it) has sha256 ``digest``."""
    records = _records(create=True)
    if records is None:  # best effort: an unusable cache only means hashing again next time
        return
    record = records / _record_name(path)
    tmp = records / f".{record.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    made = False
    try:
        st = st or os.stat(path)
        data = {"path": str(Path(path).resolve()), "sha256": digest, "identity": _identity(st)}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
        made = True
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(data).encode())
        os.replace(tmp, record)  # replaces a link at the record's name, never follows it
    except OSError:
        if made:
            try:
                tmp.unlink()
            except OSError:
                pass


def forget(path: Path) -> None:
    """Drop the record of ``path`` (best effort)."""
    records = _records(create=False)
    if records is None:
        return
    try:
        (records / _record_name(path)).unlink()
    except OSError:
        pass
