"""The download cache: file names, the download lock, stale files, and verified hashes.

Layout of the cache directory (:func:`cache_dir`):

* ``<12 hex>-<name>`` — a finished download, ``<12 hex>`` a hash of the URL and
  ``<name>`` the URL's file name; a name that is long (over 100 characters), has
  characters outside ``[A-Za-z0-9._-]`` or ends like one of the cache's own
  files is replaced by a hash (the checkpoint extension, if any, is kept);
* ``<entry>.partial`` — an interrupted download, resumed by the next call;
  removed once it is a day old and no process is downloading it;
* ``<entry>.lock`` — held (``fcntl.flock``) while a process downloads the entry,
  so two processes download a URL once; on platforms without ``fcntl`` there is
  no lock;
* ``.verified/<hash of the absolute path>.json`` — the sha256 of a file checked
  with ``sha256=`` (downloaded or local: records of local files are kept here
  too, never beside the user's files), with the file's size, mtime, ctime and
  inode. A later load with ``sha256=`` re-hashes the file only if one of those
  changed. Writing a record is best effort: a read-only cache only costs a re-hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from types import TracebackType

from ..errors import CheckpointCacheError, CheckpointDownloadError, CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

_CHUNK = 1 << 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
CHECKPOINT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_OWN_SUFFIXES = (".partial", ".lock", ".json")
STALE_SECONDS = 24 * 3600
_CACHE_FIX = ("Fix: make that directory writable, or point $WEIGHTINIT_CACHE at a writable "
              "directory.")


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


def ensure_dir(directory: Path, url: str) -> None:
    """Create the cache directory, a :class:`CheckpointCacheError` naming it if that fails."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise CheckpointCacheError(
            f"cannot download {url}: the cache directory {directory} can not be created because "
            f"{err.filename or directory} is a file, not a directory. Fix: remove or rename that "
            "file, or point $WEIGHTINIT_CACHE at a directory.") from err
    except OSError as err:
        raise cache_error(url, directory, err) from err


def cache_error(url: str, path: Path, err: OSError) -> CheckpointCacheError:
    """The error for a failed file operation on ``path`` in the cache."""
    what = "permission denied" if isinstance(err, PermissionError) else (
        err.strerror or str(err))
    return CheckpointCacheError(f"cannot download {url}: can not write {path} in the download "
                                f"cache ({what}). {_CACHE_FIX}")


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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise cache_error(self.url, self.path, err) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
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
    older versions and ``*.partial``/``*.lock`` files a day old that no process holds."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(".partial-") or name.endswith((".partial", ".lock"))):
            continue
        try:
            if now - entry.stat().st_mtime < STALE_SECONDS:
                continue
            if name.startswith(".partial-"):
                os.unlink(entry.path)
                continue
            lock = DownloadLock(Path(entry.path.removesuffix(".partial").removesuffix(".lock")
                                     + ".lock"), "", None)
            fd = lock.try_acquire() if fcntl is not None else None
            if fcntl is not None and fd is None:
                continue  # a live download
            lock.fd = fd
            try:
                if name.endswith(".partial"):
                    os.unlink(entry.path)
            finally:
                lock.release()
        except (OSError, CheckpointError):
            continue


# ------------------------------------------------------------------ verified hashes


def _record_path(path: Path) -> Path:
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
    return cache_dir() / ".verified" / f"{key}.json"


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino, "dev": st.st_dev}


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
    record = _record_path(path)
    try:
        st = os.stat(path)
    except OSError as err:
        raise unreadable(label, path, err) from err
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        if data.get("identity") == _identity(st) and isinstance(data.get("sha256"), str):
            return data["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = file_sha256(path, label)
    remember(path, digest, st)
    return digest


def remember(path: Path, digest: str, st: os.stat_result | None = None) -> None:
    """Record that ``path`` (as it is now, or as ``st`` saw it) has sha256 ``digest``."""
    record = _record_path(path)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    try:
        st = st or os.stat(path)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"path": str(Path(path).resolve()), "sha256": digest,
                                   "identity": _identity(st)}), encoding="utf-8")
        os.replace(tmp, record)
    except OSError:  # best effort: a read-only cache only means hashing again next time
        try:
            tmp.unlink()
        except OSError:
            pass


def forget(path: Path) -> None:
    """Drop the record of ``path`` (best effort)."""
    try:
        _record_path(path).unlink()
    except OSError:
        pass
