"""Issue 15: checkpoints you can trust — hashes always checked, downloads that are checked,
bounded in time, resumable and done once, and filesystem failures as library errors.

Network: only servers the tests start on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import weightinit as wi
from weightinit.checkpoint import cache as cache_mod
from weightinit.checkpoint import sources
from weightinit.cli import main


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)


def pth_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.fixture
def source() -> Net:
    torch.manual_seed(3)
    return Net()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(path))
    return path


class Server:
    """127.0.0.1 server: ``files[path] = body``; ``modes[path]`` picks a behaviour."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.full_bodies: list[str] = []  # paths whose whole body was sent
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                mode = server.modes.get(self.path, "")
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and "range" in mode:
                    start = int(rng.split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                # a strong ETag: without a validator a partial download is not resumed
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()[:16]}"')
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                data = body[start:]
                try:
                    if "drop" in mode and not start:
                        server.modes[self.path] = mode.replace("drop", "")  # once
                        self.wfile.write(data[: len(data) // 2])
                        return
                    if "trickle" in mode:
                        for i in range(len(data)):
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.5)
                        return
                    if "silent" in mode:
                        time.sleep(3)
                        return
                    if "slow" in mode:
                        for i in range(0, len(data), len(data) // 10 + 1):
                            self.wfile.write(data[i:i + len(data) // 10 + 1])
                            self.wfile.flush()
                            time.sleep(0.1)
                    else:
                        self.wfile.write(data)
                    if start == 0:
                        server.full_bodies.append(self.path)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# ------------------------------------------------------------------ sha256, always


def test_flipped_cache_byte_is_downloaded_again_then_an_error(server, cache, source):
    body = pth_bytes(source.state_dict())
    good = hashlib.sha256(body).hexdigest()
    server.files["/w.pth"] = body
    url = server.url("/w.pth")
    wi.load_checkpoint(Net(), url, sha256=good)
    target = sources.cached_path(url)
    data = bytearray(target.read_bytes())
    data[-30] ^= 0xFF
    target.write_bytes(bytes(data))
    m = Net()
    wi.load_checkpoint(m, url, sha256=good)  # corrupt entry: downloaded again
    assert torch.equal(m.fc.weight, source.fc.weight)
    assert [r[0] for r in server.requests] == ["/w.pth", "/w.pth"]
    assert target.read_bytes() == body
    # the server now serves the corrupt bytes too: error, never a load
    target.write_bytes(bytes(data))
    server.files["/w.pth"] = bytes(data)
    bad = hashlib.sha256(bytes(data)).hexdigest()
    m = Net()
    before = m.fc.weight.clone()
    with pytest.raises(wi.CheckpointHashError) as err:
        wi.load_checkpoint(m, url, sha256=good)
    text = str(err.value)
    assert url in text and str(target) in text and good in text and bad in text
    assert "Fix:" in text
    assert torch.equal(m.fc.weight, before)
    assert not target.exists()


def test_file_first_cached_without_hash_is_checked_later(server, cache, source):
    body = pth_bytes(source.state_dict())
    server.files["/x.pth"] = pth_bytes(Net().state_dict())  # the wrong file, at first
    url = server.url("/x.pth")
    wi.load_checkpoint(Net(), url)
    server.files["/x.pth"] = body
    m = Net()
    wi.load_checkpoint(m, url, sha256=hashlib.sha256(body).hexdigest())
    assert torch.equal(m.fc.weight, source.fc.weight)
    assert len(server.requests) == 2


@pytest.mark.parametrize("as_url", [False, True])
def test_local_and_file_url_hashes_are_enforced(tmp_path, cache, source, as_url):
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    ref = f"file://{path}" if as_url else str(path)
    with pytest.raises(wi.CheckpointHashError, match="sha256 is .*expected 1111.*can not be "
                                                      "downloaded again.*Fix:"):
        wi.load_checkpoint(Net(), ref, sha256="1" * 64)
    wi.load_checkpoint(Net(), ref, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def test_verified_file_is_hashed_again_only_when_it_changed(tmp_path, cache, source,
                                                            monkeypatch):
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    calls = []
    real = cache_mod.file_sha256
    monkeypatch.setattr(cache_mod, "file_sha256", lambda p, label: calls.append(p) or real(p, label))
    wi.load_checkpoint(Net(), str(path), sha256=good)
    wi.load_checkpoint(Net(), str(path), sha256=good)
    assert len(calls) == 1
    assert not list(tmp_path.glob("*.json"))  # the record lives in the cache, not beside
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, new mtime
    wi.load_checkpoint(Net(), str(path), sha256=good)
    assert len(calls) == 2
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(wi.CheckpointHashError):
        wi.load_checkpoint(Net(), str(path), sha256=good)


# ------------------------------------------------------------------ what is cached


@pytest.mark.parametrize("body,kind", [
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "received an HTML page"),
    (b'{"error": "rate limited", "retry": 30}', "received JSON"),
    (b"Service temporarily unavailable, try later", "received 42 bytes of text"),
    (b"", "received an empty response"),
])
def test_a_page_that_is_not_a_checkpoint_is_refused_and_not_cached(server, cache, body, kind):
    server.files["/m.pth"] = body
    url = server.url("/m.pth")
    with pytest.raises(wi.CheckpointDownloadError) as err:
        wi.load_checkpoint(Net(), url)
    text = str(err.value)
    assert url in text and "HTTP 200" in text and kind in text and "Fix:" in text
    assert entries(cache) == []


def test_safetensors_and_legacy_pickle_heads_are_accepted(server, cache, source, tmp_path):
    save_file(source.state_dict(), str(tmp_path / "a.safetensors"))
    server.files["/a.safetensors"] = (tmp_path / "a.safetensors").read_bytes()
    buf = io.BytesIO()
    torch.save(source.state_dict(), buf, _use_new_zipfile_serialization=False)
    server.files["/legacy.pth"] = buf.getvalue()
    for path in ("/a.safetensors", "/legacy.pth"):
        m = Net()
        wi.load_checkpoint(m, server.url(path))
        assert torch.equal(m.fc.bias, source.fc.bias)


# ------------------------------------------------------------------ time limits


def test_trickling_server_is_stopped_by_the_deadline(server, cache, source):
    server.files["/t.pth"] = pth_bytes(source.state_dict())
    server.modes["/t.pth"] = "trickle"
    start = time.monotonic()
    with pytest.raises(wi.CheckpointDownloadError, match=r"did not finish within deadline=1\.5 s"):
        wi.initialize(Net(), dict(type="Pretrained", checkpoint=server.url("/t.pth"),
                                  deadline=1.5))
    assert time.monotonic() - start < 3.5


def test_silent_server_hits_the_read_timeout(server, cache, source):
    server.files["/s.pth"] = pth_bytes(source.state_dict())
    server.modes["/s.pth"] = "silent"
    start = time.monotonic()
    with pytest.raises(wi.CheckpointDownloadError, match="timed out.*timeout="):
        wi.load_checkpoint(Net(), server.url("/s.pth"), timeout=0.5)
    assert time.monotonic() - start < 2.5


def test_cli_timeout_and_deadline_reach_downloads(server, cache, source, tmp_path):
    server.files["/c.pth"] = pth_bytes(source.state_dict())
    server.modes["/c.pth"] = "trickle"
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    rc = main(["convert", server.url("/c.pth"), str(tmp_path / "o.safetensors"),
               "--deadline", "1"], stdout=out, stderr=err)
    assert rc == 2 and "deadline=1 s" in err.getvalue()
    assert time.monotonic() - start < 3
    assert main(["convert", "a.pth", "b.safetensors", "--timeout", "0"], stdout=out,
                stderr=err) == 2
    assert "positive number of seconds" in err.getvalue()


@pytest.mark.parametrize("kw,error", [
    (dict(timeout=0), wi.InitValueError), (dict(timeout=float("inf")), wi.InitValueError),
    (dict(deadline=float("nan")), wi.InitValueError), (dict(deadline=-1), wi.InitValueError),
    (dict(timeout="5"), wi.InitTypeError), (dict(deadline=True), wi.InitTypeError),
])
def test_timeout_and_deadline_are_validated(kw, error):
    with pytest.raises(error, match="timeout|deadline"):
        wi.initialize(Net(), dict(type="Pretrained", checkpoint="x.pth", **kw))


# ------------------------------------------------------------------ resume, stale files, lock


@pytest.mark.parametrize("ranges", [True, False])
def test_interrupted_download_resumes(server, cache, source, ranges):
    body = pth_bytes(source.state_dict())
    server.files["/r.pth"] = body
    server.modes["/r.pth"] = "drop" + ("range" if ranges else "")
    url = server.url("/r.pth")
    with pytest.raises(wi.CheckpointDownloadError, match="next call resumes"):
        wi.load_checkpoint(Net(), url)
    partial = sources.cached_path(url).name + ".partial"
    assert entries(cache) == [partial, partial + ".json"]  # and its resume record (ETag)
    m = Net()
    wi.load_checkpoint(m, url, sha256=hashlib.sha256(body).hexdigest())
    assert torch.equal(m.fc.weight, source.fc.weight)
    half = len(body) // 2
    assert server.requests == [("/r.pth", None), ("/r.pth", f"bytes={half}-")]
    assert partial not in entries(cache)
    assert sources.cached_path(url).read_bytes() == body


def test_stale_partial_files_are_removed(server, cache, source):
    cache.mkdir()
    old = time.time() - 2 * 24 * 3600
    stale = [cache / ".partial-k3j2h1", cache / "0123456789ab-dead.pth.partial",
             cache / "0123456789ab-dead.pth.lock"]
    fresh = cache / "ba9876543210-live.pth.partial"
    for p in [*stale, fresh]:
        p.write_bytes(b"x" * 10)
    for p in stale:
        os.utime(p, (old, old))
    server.files["/n.pth"] = pth_bytes(source.state_dict())
    wi.load_checkpoint(Net(), server.url("/n.pth"))
    names = entries(cache)
    assert not any(p.name in names for p in stale)
    assert fresh.name in names


WORKER = """
import sys
from weightinit.checkpoint import download
print(download(sys.argv[1]))
"""


def test_two_processes_download_a_url_once(server, cache, source):
    server.files["/big.pth"] = pth_bytes({"w": torch.randn(64, 1024)})
    server.modes["/big.pth"] = "slow"
    url = server.url("/big.pth")
    env = dict(os.environ, WEIGHTINIT_CACHE=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] == str(sources.cached_path(url)) + "\n"
    assert server.full_bodies == ["/big.pth"]
    assert entries(cache) == [".verified", sources.cached_path(url).name]  # + its sha256


# ------------------------------------------------------------------ names and filesystem errors


def test_cache_names_are_always_valid(server, cache, source):
    normal = sources.cached_path("https://h/x/resnet18-f37072fd.pth")
    assert normal.name[12] == "-" and normal.name.endswith("-resnet18-f37072fd.pth")
    odd = sources.cached_path("https://h/x/my%20model (1).safetensors")
    assert odd.name.endswith(".safetensors") and " " not in odd.name and "%" not in odd.name
    server.files["/" + "a" * 300 + ".pth"] = pth_bytes(source.state_dict())
    url = server.url("/" + "a" * 300 + ".pth")
    m = Net()
    wi.load_checkpoint(m, url)
    assert torch.equal(m.fc.weight, source.fc.weight)
    name = sources.cached_path(url).name
    assert len(name) < 60 and name.endswith(".pth")


@pytest.mark.parametrize("url", ["http://[::1/w.pth", "http://", "https:///w.pth",
                                 "http://host:port/w.pth"])
def test_malformed_url(cache, url):
    with pytest.raises(wi.CheckpointDownloadError, match="not a valid.*Fix:"):
        wi.load_checkpoint(Net(), url)


def test_cache_path_that_is_a_file(tmp_path, monkeypatch, server, source):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(blocker / "cache"))
    server.files["/f.pth"] = pth_bytes(source.state_dict())
    with pytest.raises(wi.CheckpointCacheError, match=f"{blocker}.* is a file.*Fix:"):
        wi.load_checkpoint(Net(), server.url("/f.pth"))


def test_read_only_cache_directory(cache, monkeypatch, server, source):
    cache.mkdir()
    real = os.open

    def deny(path, *args, **kwargs):  # what a read-only directory does (tests may run as root)
        if str(path).startswith(str(cache)) and args and args[0] & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    server.files["/ro.pth"] = pth_bytes(source.state_dict())
    with pytest.raises(wi.CheckpointCacheError, match=f"can not write {cache}.*permission "
                                                      "denied.*Fix:.*WEIGHTINIT_CACHE"):
        wi.load_checkpoint(Net(), server.url("/ro.pth"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("hashed", [False, True])
def test_unreadable_checkpoint_is_permission_denied(tmp_path, cache, source, monkeypatch,
                                                    suffix, hashed):
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if hashed else None
    if os.geteuid() == 0:  # root reads a chmod 000 file: make open() refuse as it would
        import builtins
        real = builtins.open

        def deny(file, *args, **kwargs):
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(file))
            return real(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", deny)
    else:
        path.chmod(0)
    with pytest.raises(wi.CheckpointError, match="permission denied.*Fix:") as err:
        wi.load_checkpoint(Net(), str(path), sha256=digest)
    assert "No such file" not in str(err.value)


def test_non_string_key_is_named(tmp_path, source):
    path = tmp_path / "k.pth"
    torch.save({**source.state_dict(), 7: torch.zeros(1)}, path)
    with pytest.raises(wi.CheckpointError, match="key 7 \\(a int\\).*Fix:"):
        wi.load_checkpoint(Net(), str(path))


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pickle_of_any_protocol_is_unsafe(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / f"evil{protocol}.pth"
    path.write_bytes(pickle.dumps({"fc.weight": Evil(marker)}, protocol=protocol))
    with pytest.raises(wi.UnsafeCheckpointError, match="needs arbitrary code.*system.*"
                                                       "allow_pickle=True"):
        wi.load_checkpoint(Net(), str(path))
    assert not marker.exists()
