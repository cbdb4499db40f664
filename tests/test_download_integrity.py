"""A download is one version or nothing, and the cache never follows links it did not make.

The attacker's cases: a file that changes between the first and the resumed
request (ETag, Last-Modified, no validator, weak ETag), a server that ignores
``Range`` or lies in its ``206``, links planted in the cache, a cache directory
others can write to. Network: only servers the tests start on 127.0.0.1.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import io
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import weightinit as wi
from weightinit.checkpoint import cache as cache_mod
from weightinit.checkpoint import download, sources

LIMITS = dict(timeout=3, deadline=8)  # every download here is bounded in time
Lie = Callable[[int, bytes], tuple[int, dict[str, str], bytes]]


def pth_bytes(value: float) -> bytes:
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.full((4, 4), value), "fc.bias": torch.full((4,), value)}, buf)
    return buf.getvalue()


V1, V2 = pth_bytes(1.0), pth_bytes(2.0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)


class VersionServer:
    """127.0.0.1 server of ``/w.pth``, a file whose version :meth:`publish` changes.

    ``validators``: which of a strong ETag (``etag``), a weak one (``weak``) and
    Last-Modified (``lm``) it sends; ``ranges``: whether it serves ``Range`` at
    all; ``if_range``: whether it answers a stale ``If-Range`` with the whole
    file (as RFC 9110 says) or ignores it; ``drop``: cut the next whole-file
    answer after half of its bytes; ``lie``: builds every ``206`` answer.
    """

    def __init__(self) -> None:
        self.body = V1
        self.version = 1
        self.validators: set[str] = {"etag"}
        self.ranges = True
        self.if_range = True
        self.drop = False
        self.lie: Lie | None = None
        self.requests: list[tuple[str | None, str | None]] = []  # (Range, If-Range)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 3  # a stuck test fails instead of hanging

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                server.answer(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/w.pth"

    def publish(self, body: bytes) -> None:
        self.body = body
        self.version += 1

    def etag(self) -> str:
        return f'"{sha(self.body)[:16]}"'

    def last_modified(self) -> str:
        return email.utils.formatdate(1_600_000_000 + 1000 * self.version, usegmt=True)

    def answer(self, h: http.server.BaseHTTPRequestHandler) -> None:
        body, rng, if_range = self.body, h.headers.get("Range"), h.headers.get("If-Range")
        self.requests.append((rng, if_range))
        partial = rng is not None and self.ranges
        if partial and if_range is not None and self.if_range:
            partial = if_range in (self.etag(), self.last_modified())
        if partial:
            start = int(rng.removeprefix("bytes=").removesuffix("-"))
            status, headers, payload = (self.lie or honest)(start, body)
        else:
            status, headers, payload = 200, {"Content-Length": str(len(body))}, body
            if self.drop:
                self.drop = False
                payload = body[: len(body) // 2]
        h.send_response(status)
        if "etag" in self.validators:
            h.send_header("ETag", self.etag())
        if "weak" in self.validators:
            h.send_header("ETag", "W/" + self.etag())
        if "lm" in self.validators:
            h.send_header("Last-Modified", self.last_modified())
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=3)


def honest(start: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    n = len(body)
    return 206, {"Content-Range": f"bytes {start}-{n - 1}/{n}",
                 "Content-Length": str(n - start)}, body[start:]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(path))
    return path


@pytest.fixture
def server() -> Iterator[VersionServer]:
    s = VersionServer()
    yield s
    s.close()


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != ".verified")


def recorded(cache: Path) -> list[str]:
    """The sha256 values the cache recorded (one JSON file each under .verified/)."""
    return [json.loads(p.read_text())["sha256"] for p in (cache / ".verified").glob("*.json")]


def interrupt(server: VersionServer) -> Path:
    """A first download cut after half of the file: returns the partial file's path."""
    server.drop = True
    with pytest.raises(wi.CheckpointDownloadError):
        download(server.url, **LIMITS)
    return sources.cached_path(server.url).with_name(
        sources.cached_path(server.url).name + ".partial")


# ------------------------------------------------------------------ one version or nothing


def test_unchanged_file_resumes_with_if_range_and_records_the_assembled_sha(server, cache,
                                                                            monkeypatch):
    part = interrupt(server)
    assert part.read_bytes() == V1[: len(V1) // 2]
    assert entries(cache) == [part.name, part.name + ".json"]
    path = download(server.url, **LIMITS)
    assert server.requests == [(None, None), (f"bytes={len(V1) // 2}-", server.etag())]
    assert Path(path).read_bytes() == V1
    assert entries(cache) == [Path(path).name]
    assert recorded(cache) == [sha(V1)]
    # a later pinned load takes the recorded hash, without reading the file again
    monkeypatch.setattr(cache_mod, "file_sha256", lambda *a: pytest.fail("hashed again"))
    m = Net()
    wi.load_checkpoint(m, server.url, sha256=sha(V1))
    assert torch.equal(m.fc.bias, torch.full((4,), 1.0))


@pytest.mark.parametrize("validators", [{"etag"}, {"lm"}, {"etag", "lm"}])
def test_file_changed_before_the_resume_gives_the_new_version_only(server, cache,
                                                                   validators):
    server.validators = validators
    sent = server.etag() if "etag" in validators else server.last_modified()
    interrupt(server)
    server.publish(V2)
    assert len(V2) == len(V1)  # the same length: only the validator can tell them apart
    path = download(server.url, **LIMITS)
    assert server.requests[1] == (f"bytes={len(V1) // 2}-", sent)
    assert Path(path).read_bytes() == V2
    assert recorded(cache) == [sha(V2)]
    assert entries(cache) == [Path(path).name]


@pytest.mark.parametrize("validators", [{"etag"}, {"lm"}])
def test_server_ignoring_if_range_is_caught_by_the_validator_it_sends(server, cache,
                                                                      validators, caplog):
    server.validators = validators
    server.if_range = False  # it serves a 206 of the new version
    interrupt(server)
    server.publish(V2)
    with caplog.at_level(logging.WARNING, logger="weightinit"):
        path = download(server.url, **LIMITS)
    assert "(the file changed)" in caplog.text and "downloading the whole file again" in caplog.text
    assert [r[0] for r in server.requests] == [None, f"bytes={len(V1) // 2}-", None]
    assert Path(path).read_bytes() == V2
    assert recorded(cache) == [sha(V2)]


@pytest.mark.parametrize("validators", [set(), {"weak"}, {"weak", "lm"}])
def test_without_a_strong_validator_nothing_is_resumed(server, cache, validators):
    server.validators = validators
    server.drop = True
    with pytest.raises(wi.CheckpointDownloadError) as err:
        download(server.url, **LIMITS)
    assert type(err.value) is wi.CheckpointDownloadError
    text = str(err.value)
    assert server.url in text and "names no version to resume by" in text
    assert "nothing was kept and the next call starts over" in text and "Fix:" in text
    assert entries(cache) == []
    server.publish(V2)
    path = download(server.url, **LIMITS)
    assert server.requests == [(None, None), (None, None)]
    assert Path(path).read_bytes() == V2
    assert recorded(cache) == [sha(V2)]


def test_server_ignoring_range_answers_200_and_the_download_starts_over(server, cache):
    server.ranges = False
    interrupt(server)
    path = download(server.url, **LIMITS)
    assert server.requests[1] == (f"bytes={len(V1) // 2}-", server.etag())
    assert len(server.requests) == 2  # the 200 is the whole file: no third request
    assert Path(path).read_bytes() == V1
    assert entries(cache) == [Path(path).name]


def wrong_start(start: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    n = len(body)
    return 206, {"Content-Range": f"bytes {start - 7}-{n - 1}/{n}",
                 "Content-Length": str(n - start + 7)}, body[start - 7:]


def wrong_end(start: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    n = len(body)
    return 206, {"Content-Range": f"bytes {start}-{n - 2}/{n}",
                 "Content-Length": str(n - 1 - start)}, body[start:n - 1]


def wrong_total(start: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    n = len(body) + 10
    return 206, {"Content-Range": f"bytes {start}-{n - 1}/{n}",
                 "Content-Length": str(n - start)}, body[start:] + b"\0" * 10


def unknown_total(start: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    n = len(body)
    return 206, {"Content-Range": f"bytes {start}-{n - 1}/*",
                 "Content-Length": str(n - start)}, body[start:]


def length_disagrees(start: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    n = len(body)
    return 206, {"Content-Range": f"bytes {start}-{n - 1}/{n}",
                 "Content-Length": str(n - start - 5)}, body[start:n - 5]


@pytest.mark.parametrize("lie", [wrong_start, wrong_end, wrong_total, unknown_total,
                                 length_disagrees])
def test_inconsistent_206_is_discarded_and_the_download_starts_over(server, cache, lie,
                                                                    caplog):
    interrupt(server)
    server.lie = lie
    with caplog.at_level(logging.WARNING, logger="weightinit"):
        path = download(server.url, **LIMITS)
    assert "downloading the whole file again" in caplog.text and server.url in caplog.text
    assert [r[0] for r in server.requests] == [None, f"bytes={len(V1) // 2}-", None]
    assert Path(path).read_bytes() == V1
    assert recorded(cache) == [sha(V1)]
    assert entries(cache) == [Path(path).name]


def test_short_206_body_keeps_only_what_arrived_and_resumes_later(server, cache):
    part = interrupt(server)
    half = len(V1) // 2
    more = (len(V1) - half) // 2

    def short(start: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
        status, headers, payload = honest(start, body)
        return status, headers, payload[:more]  # then hangs up, short of what it announced

    server.lie = short
    with pytest.raises(wi.CheckpointDownloadError) as err:
        download(server.url, **LIMITS)
    assert type(err.value) is wi.CheckpointDownloadError
    assert f"stopped after {half + more} of {len(V1)} bytes" in str(err.value)
    assert "next call resumes" in str(err.value)
    assert part.read_bytes() == V1[: half + more]
    assert not sources.cached_path(server.url).exists()
    server.lie = None
    path = download(server.url, **LIMITS)
    assert server.requests[-1] == (f"bytes={half + more}-", server.etag())
    assert Path(path).read_bytes() == V1


def test_206_body_longer_than_announced_is_refused_and_nothing_kept(server, cache):
    interrupt(server)

    def long(start: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
        n = len(body)  # no Content-Length: the body runs to the end of the connection
        return 206, {"Content-Range": f"bytes {start}-{n - 1}/{n}"}, body[start:] + b"EXTRA"

    server.lie = long
    with pytest.raises(wi.CheckpointDownloadError) as err:
        download(server.url, **LIMITS)
    assert type(err.value) is wi.CheckpointDownloadError
    text = str(err.value)
    assert server.url in text and f"sent more than the {len(V1)} bytes it announced" in text
    assert "nothing was kept" in text and "Fix:" in text
    assert entries(cache) == []
    server.lie = None
    path = download(server.url, **LIMITS)
    assert server.requests[-1] == (None, None)
    assert Path(path).read_bytes() == V1


def test_bytes_past_the_announced_content_length_are_never_read(server, cache):
    interrupt(server)

    def padded(start: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
        status, headers, payload = honest(start, body)
        return status, headers, payload + b"EXTRA"

    server.lie = padded
    path = download(server.url, **LIMITS)
    assert Path(path).read_bytes() == V1
    assert recorded(cache) == [sha(V1)]


def test_cached_file_changed_after_download_is_downloaded_again(server, cache, caplog):
    path = Path(download(server.url, **LIMITS))
    path.write_bytes(V2)  # same length, other bytes
    with caplog.at_level(logging.WARNING, logger="weightinit"):
        assert download(server.url, **LIMITS) == str(path)
    assert f"not the {sha(V1)} recorded when it was downloaded" in caplog.text
    assert path.read_bytes() == V1
    assert len(server.requests) == 2


def test_stale_partial_file_goes_with_its_resume_record(server, cache):
    part = interrupt(server)
    record = part.with_name(part.name + ".json")
    old = os.path.getmtime(part) - 2 * cache_mod.STALE_SECONDS
    for path in (part, record):
        os.utime(path, (old, old))
    cache_mod.clean_stale(cache)
    assert entries(cache) == []


# ------------------------------------------------------------------ links in the cache


def planted(cache: Path, url: str, suffix: str, target: Path) -> Path:
    cache.mkdir(mode=0o700)
    entry = sources.cached_path(url)
    link = entry.with_name(entry.name + suffix)
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("suffix", [".partial", ".partial.json", ".lock", ""])
@pytest.mark.parametrize("exists", [True, False])
def test_link_planted_in_the_cache_is_refused_and_never_followed(server, cache, tmp_path,
                                                                 suffix, exists):
    outside = tmp_path / "outside.txt"
    if exists:
        outside.write_bytes(b"precious")
    link = planted(cache, server.url, suffix, outside)
    with pytest.raises(wi.CheckpointCacheError) as err:
        download(server.url, **LIMITS)
    assert type(err.value) is wi.CheckpointCacheError
    text = str(err.value)
    assert server.url in text and str(link) in text and "is a symbolic link" in text
    assert "never follows links" in text and f"Fix: remove it (rm {link})" in text
    assert server.requests == []  # refused before anything was fetched
    if exists:
        assert outside.read_bytes() == b"precious"
    else:
        assert not outside.exists()
    assert link.is_symlink()  # left for the user to look at, never renamed into place
    if suffix:
        assert not os.path.lexists(sources.cached_path(server.url))


def test_entry_that_is_not_a_regular_file_is_refused(server, cache):
    cache.mkdir(mode=0o700)
    sources.cached_path(server.url).mkdir()
    with pytest.raises(wi.CheckpointCacheError, match="is not a regular file.*Fix: remove it"):
        download(server.url, **LIMITS)
    assert server.requests == []


# ------------------------------------------------------------------ the cache directory


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_cache_directory_others_can_write_to_is_refused(server, cache, mode):
    cache.mkdir()
    cache.chmod(mode)
    with pytest.raises(wi.CheckpointCacheError) as err:
        download(server.url, **LIMITS)
    assert type(err.value) is wi.CheckpointCacheError
    text = str(err.value)
    assert server.url in text and f"refusing the cache directory {cache}" in text
    assert f"group or other users can write to it (mode {mode:o})" in text
    assert f"Fix: chmod 700 {cache}" in text and "$WEIGHTINIT_CACHE" in text
    assert server.requests == [] and sorted(os.listdir(cache)) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="chown to another user needs root")
def test_cache_directory_of_another_user_is_refused(server, cache):
    cache.mkdir(mode=0o700)
    os.chown(cache, 12345, 12345)
    with pytest.raises(wi.CheckpointCacheError,
                       match=r"belongs to another user \(uid 12345\).*Fix: chmod 700"):
        download(server.url, **LIMITS)
    assert server.requests == []


def test_cache_directories_are_created_private(server, tmp_path, monkeypatch):
    cache = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(cache))
    old = os.umask(0)  # even a permissive umask gives private directories
    try:
        path = Path(download(server.url, **LIMITS))
    finally:
        os.umask(old)
    for made in (tmp_path / "a", tmp_path / "a" / "b", cache, cache / ".verified"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == V1


def test_existing_cache_directory_only_the_owner_writes_is_used(server, cache):
    cache.mkdir()
    cache.chmod(0o755)  # what earlier versions created
    assert Path(download(server.url, **LIMITS)).read_bytes() == V1


def test_hash_records_in_a_cache_others_can_write_are_not_trusted(tmp_path, cache):
    local = tmp_path / "w.pth"
    local.write_bytes(V1)
    cache.mkdir()
    (cache / ".verified").mkdir()
    cache.chmod(0o777)
    forged = {"path": str(local.resolve()), "sha256": sha(V2),
              "identity": cache_mod._identity(os.stat(local))}
    (cache / ".verified" / cache_mod._record_name(local)).write_text(json.dumps(forged))
    with pytest.raises(wi.CheckpointHashError, match=f"sha256 is {sha(V1)}, expected {sha(V2)}"):
        wi.load_checkpoint(Net(), str(local), sha256=sha(V2))
    m = Net()
    wi.load_checkpoint(m, str(local), sha256=sha(V1))
    assert torch.equal(m.fc.weight, torch.full((4, 4), 1.0))
