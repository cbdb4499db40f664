"""SPEC B4: checkpoint sources, formats, keys, reports and failures (network: 127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import weightinit as wi
from weightinit.checkpoint import sources


class Net(nn.Module):
    def __init__(self, extra: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 4)
        if extra:
            self.head = nn.Linear(4, 2)


def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def assert_same(m: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.fixture
def source() -> Net:
    torch.manual_seed(1)
    return Net()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("WEIGHTINIT_CACHE", str(path))
    return path


class Server:
    """A tiny HTTP server on 127.0.0.1 serving bytes by path, with failure modes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                if self.path.startswith("/status/"):
                    self.send_error(int(self.path.rsplit("/", 1)[1]))
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path.startswith("/drop/"):
                    self.wfile.write(body[: len(body) // 2])  # then hang up
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

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


def pth_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


# ------------------------------------------------------------------ http(s) and the cache


def test_download_once_then_offline_from_cache(server, cache, source):
    server.files["/w/net.pth"] = pth_bytes(source.state_dict())
    url = server.url("/w/net.pth")
    m = Net()
    report = wi.load_checkpoint(m, url)
    assert torch.equal(m.fc.weight, source.fc.weight)
    assert sorted(report.loaded) == sorted(source.state_dict())
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    server.close()  # offline from now on
    m2 = Net()
    wi.load_checkpoint(m2, url)
    assert torch.equal(m2.conv.weight, source.conv.weight)
    assert server.requests == ["/w/net.pth"]
    files = [f for f in cache.iterdir() if not f.name.startswith(".")]  # (.verified: hashes)
    assert len(files) == 1 and files[0].name.endswith("-net.pth")
    assert (cache / ".verified").is_dir()


def test_sha256_checked_and_bad_file_not_kept(server, cache, source):
    body = pth_bytes(source.state_dict())
    server.files["/a.pth"] = body
    good = hashlib.sha256(body).hexdigest()
    m = Net()
    before = snapshot(m)
    with pytest.raises(wi.CheckpointHashError, match="sha256 is .*expected 0000"):
        wi.load_checkpoint(m, server.url("/a.pth"), sha256="0" * 64)
    assert_same(m, before)
    assert not cache.exists() or list(cache.iterdir()) == []
    wi.load_checkpoint(m, server.url("/a.pth"), sha256=good)
    assert torch.equal(m.fc.bias, source.fc.bias)


@pytest.mark.parametrize("path,match", [("/status/404", "HTTP 404"), ("/status/500", "HTTP 500"),
                                        ("/missing.pth", "HTTP 404")])
def test_http_errors(server, cache, path, match):
    m = Net()
    before = snapshot(m)
    with pytest.raises(wi.CheckpointDownloadError, match=match) as err:
        initialize_pretrained(m, server.url(path))
    assert isinstance(err.value, wi.InitError) and isinstance(err.value, RuntimeError)
    assert_same(m, before)
    assert not cache.exists() or list(cache.iterdir()) == []


def initialize_pretrained(m: nn.Module, ref: str, **kw) -> None:
    wi.initialize(m, dict(type="Pretrained", checkpoint=ref, **kw))


def test_dropped_connection_never_takes_the_final_name(server, cache, source):
    server.files["/drop/net.pth"] = pth_bytes(source.state_dict())
    m = Net()
    before = snapshot(m)
    url = server.url("/drop/net.pth")
    with pytest.raises(wi.CheckpointDownloadError, match="cannot download|stopped after"):
        initialize_pretrained(m, url)
    assert_same(m, before)
    # the cache entry's own name is never taken; and this server names no version (no ETag,
    # no Last-Modified), so what arrived could never be resumed safely: nothing is kept
    final = sources.cached_path(url)
    assert not final.exists()
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == []


def test_torchvision_names_resolve_from_the_shipped_table(cache, source):
    urls = wi.checkpoint.torchvision_urls()
    assert urls["resnet50"].endswith("resnet50-0676ba61.pth") and len(urls) >= 50
    cached = sources.cached_path(urls["resnet18"])
    cached.parent.mkdir(parents=True)
    cached.write_bytes(pth_bytes(source.state_dict()))  # as if downloaded before: no network
    m = Net()
    wi.load_checkpoint(m, "torchvision://resnet18")
    assert torch.equal(m.fc.weight, source.fc.weight)
    with pytest.raises(wi.CheckpointNotFoundError, match="Did you mean 'resnet50'"):
        wi.load_checkpoint(Net(), "torchvision://resnet5O")


def test_user_scheme(tmp_path, source):
    save_file(source.state_dict(), str(tmp_path / "blob.safetensors"))

    @wi.register_scheme("memtest", force=True)
    def fetch(ref: str, sha256: str | None) -> str:
        return str(tmp_path / ref.split("://", 1)[1])

    m = Net()
    wi.load_checkpoint(m, "memtest://blob.safetensors")
    assert torch.equal(m.bn.running_var, source.bn.running_var)
    with pytest.raises(wi.CheckpointNotFoundError, match="no handler for the 'nope' scheme"):
        wi.load_checkpoint(Net(), "nope://x.pth")


# ------------------------------------------------------------------ formats and keys


@pytest.mark.parametrize("nest", ["state_dict", "model", "module"])
def test_nested_weights_and_ddp_prefix(tmp_path, source, nest):
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "nested.pth"
    torch.save({nest: state, "epoch": 3}, path)
    m = Net()
    wi.load_checkpoint(m, str(path))
    assert torch.equal(m.conv.weight, source.conv.weight)


def test_revise_keys_and_prefix(tmp_path, source):
    state = {f"encoder.backbone.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    m = Net()
    report = wi.load_checkpoint(m, str(path), revise_keys=[(r"^encoder\.", "")],
                                prefix="backbone")
    assert torch.equal(m.fc.weight, source.fc.weight) and len(report.loaded) == 9
    with pytest.raises(wi.InitTypeError, match="not a valid regex"):
        wi.load_checkpoint(m, str(path), revise_keys=[("(", "")])


def test_report_strict_and_mismatch_policies(tmp_path, source):
    state = source.state_dict()
    state["fc.weight"] = torch.zeros(5, 4)
    state["unused.weight"] = torch.zeros(1)
    del state["conv.bias"]
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    m = Net(extra=True)
    before = snapshot(m)
    for kwargs, match in [(dict(strict=True), "strict load"),
                          (dict(mismatch="error"), "shape mismatch loading")]:
        with pytest.raises(wi.CheckpointMismatchError, match=match):
            wi.load_checkpoint(m, str(path), **kwargs)
        assert_same(m, before)
    report = wi.load_checkpoint(m, str(path))
    assert report.mismatched == [("fc.weight", (5, 4), (4, 4))]
    assert report.unexpected == ["unused.weight"]
    assert report.missing == ["conv.bias", "head.weight", "head.bias"]
    assert torch.equal(m.fc.weight, before["fc.weight"])  # skipped: left to the rules
    assert torch.equal(m.fc.bias, source.fc.bias)
    assert "shape mismatch: fc.weight (checkpoint (5, 4), model (4, 4))" in str(report)


def test_no_matching_keys_is_an_error(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.layer.weight": torch.zeros(2)}, str(path))
    m = Net()
    before = snapshot(m)
    with pytest.raises(wi.CheckpointMismatchError, match="no key of .* matches") as err:
        wi.load_checkpoint(m, str(path))
    assert "checkpoint keys start encoder.layer.weight" in str(err.value)
    assert_same(m, before)


@pytest.mark.parametrize("content,name,match", [
    (b"\x00" * 100, "junk.pth", "not a readable PyTorch checkpoint"),
    (b"hello", "weights.safetensors", "not a readable safetensors file"),
    (b"a,b\n1,2\n", "weights.csv", "not a readable PyTorch checkpoint"),
])
def test_corrupt_or_wrong_format(tmp_path, content, name, match):
    path = tmp_path / name
    path.write_bytes(content)
    m = Net()
    before = snapshot(m)
    with pytest.raises(wi.CheckpointError, match=match):
        wi.load_checkpoint(m, str(path))
    assert_same(m, before)


def test_truncated_files(tmp_path, source):
    pth = tmp_path / "t.pth"
    pth.write_bytes(pth_bytes(source.state_dict())[:300])
    st = tmp_path / "t.safetensors"
    save_file(source.state_dict(), str(st))
    st.write_bytes(st.read_bytes()[:200])
    for path in (pth, st):
        with pytest.raises(wi.CheckpointError, match="truncated"):
            wi.load_checkpoint(Net(), str(path))


# ------------------------------------------------------------------ with deferred models


def test_deferred_model_reads_the_checkpoint_once_into_memory_of_its_own(tmp_path, source):
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    with wi.deferred():
        m = Net(extra=True)
    report = wi.load_checkpoint(m, str(path))
    for k, v in source.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert report.missing == ["head.weight", "head.bias"]
    bound = 1 / 2  # head keeps its PyTorch default (kaiming_uniform_, fan_in 4)
    assert m.head.weight.abs().max() <= bound and not m.head.weight.is_meta
    rec = wi.get_init_record(m)
    assert rec["fc.weight"].kind == "pretrained" and rec.loads[0] is report
    # the copy from the file is the one write (never drawn first), into memory torch owns:
    # the safetensors values are views of the mapped file, which a parameter never keeps
    assert m.fc.weight._version == 1
    assert m.fc.weight.untyped_storage().resizable()
