"""Every code block of README.md runs as written.

How blocks are found and run (decided here, once):

* ```` ```python ```` blocks run in README order. Blocks of one ``## `` section share
  one namespace (a later block may use what an earlier one of the same section defined);
  each section starts from a fresh namespace, so no block depends on another section.
* Working directory: a fresh temporary directory holding a link ``examples`` to the
  repository's ``examples/`` (so ``examples/configs/...`` paths work and every file a
  block writes lands in the temporary directory); ``sys.path`` includes ``examples/``, so
  ``from models import llama`` imports the bundled example models.
* Shell commands that start with ``weightinit `` or ``python `` run through a subprocess
  in such a directory: indented command lines (``    weightinit ...``, continued with
  ``\\``) and ```` ```bash ```` blocks. A fenced block whose first line starts with ``$ ``
  is a transcript: each ``$ `` command runs, and every line shown after it must appear in
  its output (numbers within 5 %, a time in seconds and ``...`` lines are not compared;
  whitespace runs are compared as one space, since tables are trimmed). Other commands
  (``make ...``) are not run; see ``SKIPPED_COMMANDS``.
* A block preceded by ``<!-- readme-test: skip (reason) -->`` is not run (a GPU,
  several processes).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"

#: Commands the README shows that this test does not run, and why.
SKIPPED_COMMANDS = {
    "make demo": "runs the ResNet-50 `weightinit init` shown below it, which this test runs",
    "make test": "the test suite itself (with a wheel build)",
    "python examples/sharded.py": "starts 2 processes; tests/test_examples.py runs it",
}

#: First words of an indented block that make it a command block.
COMMAND_WORDS = ("weightinit", "python", "make", "bash", "torchrun")

SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->")


@dataclass
class Block:
    kind: str      # "python", "shell" (commands) or "transcript"
    text: str
    section: str
    line: int      # 1-based line of the block's first line in README.md
    skip: str | None = None

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.section})"


def _blocks() -> list[Block]:
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    section = "(top)"
    skip: str | None = None
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        mark = SKIP_MARK.search(line)
        if mark:
            skip = mark.group(1).strip() or "marked"
            i += 1
            continue
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and not in_fence:
            lang = fence.group(1)
            body = []
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                body.append(lines[j])
                j += 1
            text = "\n".join(body)
            if lang == "python":
                blocks.append(Block("python", text, section, i + 2, skip))
            elif lang in ("bash", "sh", "shell"):
                blocks.append(Block("shell", text, section, i + 2, skip))
            elif lang == "" and body and body[0].startswith("$ "):
                blocks.append(Block("transcript", text, section, i + 2, skip))
            skip = None
            i = j + 1
            continue
        if line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            body = []
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                body.append(lines[j][4:])
                j += 1
            text = "\n".join(body).strip("\n")
            if text.startswith("$ "):
                blocks.append(Block("transcript", text, section, i + 1, skip))
            elif text.split(" ", 1)[0] in COMMAND_WORDS:  # else: an indented message, not code
                blocks.append(Block("shell", text, section, i + 1, skip))
            skip = None
            i = j
            continue
        if line.strip():
            skip = None if not line.startswith("<!--") else skip
        i += 1
    return blocks


def _commands(text: str, prompt: bool) -> list[tuple[str, list[str]]]:
    """(command, the lines shown after it) for each command line in a block."""
    out: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        is_cmd = line.startswith("$ ") if prompt else bool(line.strip())
        if not is_cmd:
            if out:
                out[-1][1].append(line)
            i += 1
            continue
        cmd = line[2:] if prompt else line
        while cmd.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
        out.append((" ".join(cmd.split()), []))
        i += 1
    return out


def _workdir(tmp_path: Path) -> Path:
    (tmp_path / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    return tmp_path


def _run(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(cmd)
    if argv[0] == "weightinit":
        argv = [sys.executable, "-m", "weightinit", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def _same(expected: str, actual: str) -> bool:
    """Equal up to whitespace runs, numbers within 5 %, and times in seconds."""
    expected, actual = " ".join(expected.split()), " ".join(actual.split())
    if NUMBER.sub("#", expected) != NUMBER.sub("#", actual):
        return False
    timed = re.compile(r"(" + NUMBER.pattern + r") s\b")
    times = {m.start(1) for m in timed.finditer(expected)}
    for m, n in zip(NUMBER.finditer(expected), NUMBER.finditer(actual)):
        if m.start() in times:
            continue
        a, b = (float(x.group().replace(",", "")) for x in (m, n))
        if abs(a - b) > 0.05 * max(abs(a), abs(b)):
            return False
    return True


BLOCKS = _blocks()


def test_the_readme_has_blocks_of_each_kind():
    kinds = {b.kind for b in BLOCKS}
    assert kinds == {"python", "shell", "transcript"}, kinds
    assert sum(b.skip is not None for b in BLOCKS) <= 2, [str(b) for b in BLOCKS if b.skip]


def _sections() -> dict[str, list[Block]]:
    out: dict[str, list[Block]] = {}
    for b in BLOCKS:
        if b.kind == "python":
            out.setdefault(b.section, []).append(b)
    return out


@pytest.mark.parametrize("section", list(_sections()))
def test_python_blocks_run(section, tmp_path, monkeypatch):
    try:
        _run_section(section, tmp_path, monkeypatch)
    finally:  # the OpenMMLab section installs the bridge: leave MMEngine as it was
        bridge = sys.modules.get("weightinit.mmengine")
        if bridge is not None:
            bridge.uninstall()


def _run_section(section, tmp_path, monkeypatch):
    cwd = _workdir(tmp_path)
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    namespace: dict[str, object] = {"__name__": "__readme__"}
    ran = 0
    for block in _sections()[section]:
        if block.skip:
            continue
        code = compile("\n" * (block.line - 1) + block.text, str(README), "exec")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a block may show a warning on purpose
            exec(code, namespace)  # noqa: S102 - the README's own examples
        ran += 1
    if not ran:
        pytest.skip(f"every python block of {section!r} is marked skip")


def _command_cases() -> list[tuple[str, str, list[str]]]:
    cases = []
    for b in BLOCKS:
        if b.kind == "python" or b.skip:
            continue
        for cmd, shown in _commands(b.text, prompt=b.kind == "transcript"):
            if cmd in SKIPPED_COMMANDS:
                continue
            assert cmd.split()[0] in ("weightinit", "python"), (
                f"{b}: command {cmd!r} is neither run nor in SKIPPED_COMMANDS")
            cases.append((str(b), cmd, shown if b.kind == "transcript" else []))
    return cases


@pytest.mark.parametrize("where, cmd, shown", _command_cases(),
                         ids=[c[1][:60] for c in _command_cases()])
def test_shell_commands_run(where, cmd, shown, tmp_path):
    done = _run(cmd, _workdir(tmp_path))
    output = (done.stdout + done.stderr).splitlines()
    error = any(line.startswith("weightinit: error:") for line in shown)
    flagged = any(": FLAGGED —" in line for line in shown)
    expected_rc = 2 if error else 1 if flagged else 0
    assert done.returncode == expected_rc, f"{where}: {cmd}\n{done.stdout}\n{done.stderr}"
    for line in shown:
        if not line.strip() or line.strip() == "...":
            continue
        assert any(_same(line, got) for got in output), (
            f"{where}: {cmd}: README shows\n{line}\nbut the output is\n" + "\n".join(output))


def test_same_compares_numbers_loosely_and_text_exactly():
    assert _same("gain 0.735, in 0.13 s", "gain  0.74, in 12.5 s")
    assert not _same("gain 0.735", "gain 0.9")
    assert not _same("ok — gain 1", "FLAGGED — gain 1")
