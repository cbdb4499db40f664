"""Compare two weightinit source trees ("before" and "after") on the benchmarks, in one run.

Each benchmark script in this folder is run as a subprocess, alternately with
``PYTHONPATH=<before-src>`` and ``PYTHONPATH=<after-src>``, by the same
interpreter (``--python``) and from the same copy of the scripts (this
folder), ``--rounds`` times: interleaved A/B rounds, the order flipping from
round to round (before, after / after, before / ...), so that drift on the
machine hits both sides alike. Each run writes its medians with ``--json``;
the JSON names the ``weightinit/__init__.py`` the run (and each of its worker
processes) imported, and the comparison stops if that is not under the
intended tree.

For each benchmark, one Markdown table: a row per case, the median over the
rounds of each side's medians (``before ms``, ``after ms``), ``after/before``
(below 1 is faster after), and the range of the per-round ratios. Rows whose
name ends in ``(ref)`` do not run weightinit code (fill floors, torch,
MMEngine): their ratio shows how noisy the machine was. Peak memory, where a
benchmark measures it, gets a second table.

By default MMEngine is left out (``--no-mmengine``; ``--eager weightinit`` for
``bench_deferred.py``, whose eager row then runs weightinit's eager
``init_weights()``): it does not change between the trees and costs most of
the time. ``--with-mmengine`` keeps it.

Run from the repository root, after creating the "before" tree::

    git worktree add /tmp/wi-before ebeb0ae
    python benchmarks/compare.py planning init --rounds 3
    python benchmarks/compare.py --smoke           # every benchmark, tiny sizes, 1 round
    python benchmarks/compare.py sharded --sharded-args "--worlds 1 2 4"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent

BENCHMARKS: dict[str, str] = {
    "init": "bench_init.py",
    "deferred": "bench_deferred.py",
    "sharded": "bench_sharded.py",
    "planning": "bench_planning.py",
}
TITLES = {
    "init": "init_weights() (bench_init.py)",
    "deferred": "deferred build + init_weights() (bench_deferred.py)",
    "sharded": "sharded init, Llama (bench_sharded.py)",
    "planning": "plan() and init_weights() against the number of modules (bench_planning.py)",
}
# Without MMEngine (the default here): it is the same code on both sides.
NO_MMENGINE = {
    "init": ["--no-mmengine"],
    "deferred": ["--eager", "weightinit"],
    "sharded": ["--no-mmengine"],
    "planning": ["--no-mmengine"],
}
# --smoke: tiny sizes, one repeat each.
SMOKE = {
    "init": ["--models", "vit_b16", "--repeats", "1", "--warmup", "0", "--fill-repeats", "3"],
    "deferred": ["--tiny", "--repeats", "1"],
    "sharded": ["--size", "tiny", "--repeats", "1"],
    "planning": ["--sizes", "1000", "4000", "--repeats", "1"],
}
SIDES = ("before", "after")


@dataclass
class Side:
    """Everything one side (before or after) gave for one benchmark."""

    src: Path
    seconds: dict[str, list[float]] = field(default_factory=dict)
    peak: dict[str, list[float]] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)
    wall: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def describe_tree(src: Path) -> str:
    """``<short commit>`` (``+ uncommitted changes`` when dirty) of the checkout holding ``src``."""
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return commit + (" + uncommitted changes" if dirty else "")


def check_imported(side: str, src: Path, data: dict[str, Any]) -> None:
    """Stop unless every weightinit the run imported lies under ``src``."""
    files = [data["weightinit_file"], *data.get("worker_weightinit_files", [])]
    for f in files:
        if not Path(f).resolve().is_relative_to(src):
            raise SystemExit(f"error: the {side} run imported {f}, which is not under {src}. "
                             "Is weightinit installed non-editable in that environment?")


def run_once(python: str, name: str, side: str, src: Path, args: list[str], out_dir: Path,
             round_no: int, timeout: float, verbose: bool) -> tuple[dict[str, Any], float]:
    """Run one benchmark on one side; its JSON and wall seconds."""
    json_path = out_dir / f"{name}-{side}-{round_no}.json"
    cmd = [python, str(HERE / BENCHMARKS[name]), *args, "--json", str(json_path)]
    env = dict(os.environ, PYTHONPATH=str(src))
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"error: {name} ({side}) ran past --timeout {timeout:.0f}s: "
                         f"{shlex.join(cmd)}") from None
    wall = time.perf_counter() - start
    (out_dir / f"{name}-{side}-{round_no}.log").write_text(
        f"$ PYTHONPATH={src} {shlex.join(cmd)}\n\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}")
    if verbose:
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0 or not json_path.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"error: {name} ({side}) failed with exit {proc.returncode}:\n"
                         f"$ PYTHONPATH={src} {shlex.join(cmd)}\n{tail}")
    data = json.loads(json_path.read_text())
    check_imported(side, src, data)
    return data, wall


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    value = seconds * 1e3
    return f"{value:.0f}" if value >= 1000 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def case_order(before: Side, after: Side) -> list[str]:
    names = list(before.seconds)
    names += [n for n in after.seconds if n not in before.seconds]
    return names


def time_table(before: Side, after: Side, hide_ref: bool) -> str:
    rows = []
    for name in case_order(before, after):
        if hide_ref and name.endswith("(ref)"):
            continue
        b, a = before.seconds.get(name), after.seconds.get(name)
        mb, ma = median(b), median(a)
        ratio = f"{ma / mb:.2f}x" if mb and ma is not None else "n/a"
        per_round = [y / x for x, y in zip(b or [], a or []) if x]
        spread = (f"{min(per_round):.2f}–{max(per_round):.2f}x" if len(per_round) > 1
                  else "n/a (1 round)" if per_round else "n/a")
        rows.append([name, fmt_ms(mb), fmt_ms(ma), ratio, spread])
    return markdown(["case", "before ms", "after ms", "after/before",
                     "after/before per round (min–max)"], rows)


def peak_table(before: Side, after: Side) -> str | None:
    names = [n for n in case_order(before, after) if n in before.peak or n in after.peak]
    if not names:
        return None
    rows = []
    for name in names:
        mb, ma = median(before.peak.get(name)), median(after.peak.get(name))
        rows.append([name, "n/a" if mb is None else f"{mb:.2f}x",
                     "n/a" if ma is None else f"{ma:.2f}x"])
    return markdown(["case", "before peak/param bytes", "after peak/param bytes"], rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("benchmarks", nargs="*", default=list(BENCHMARKS),
                        help=f"which to run, in order (default: all: {' '.join(BENCHMARKS)})")
    parser.add_argument("--python", default=str(REPO_ROOT / ".venv" / "bin" / "python"),
                        help="interpreter for every run (default: .venv/bin/python)")
    parser.add_argument("--before-src", type=Path, default=Path("/tmp/wi-before/src"),
                        help="the 'before' tree's src/ folder (default: /tmp/wi-before/src)")
    parser.add_argument("--after-src", type=Path, default=REPO_ROOT / "src",
                        help="the 'after' tree's src/ folder (default: this checkout's src/)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="A/B rounds per benchmark; medians over rounds (default: 3)")
    for name in BENCHMARKS:
        parser.add_argument(f"--{name}-args", default="", metavar="ARGS",
                            help=f"extra arguments for {BENCHMARKS[name]} (one string)")
    parser.add_argument("--with-mmengine", action="store_true",
                        help="keep MMEngine in the benchmarks (default: left out)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and one repeat in every benchmark (a quick check)")
    parser.add_argument("--hide-ref", action="store_true",
                        help="leave out the (ref) rows (floors, torch, MMEngine)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds one benchmark run may take (default: 3600)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep every run's JSON and output in DIR (default: a temporary "
                             "folder, removed)")
    parser.add_argument("--verbose", action="store_true",
                        help="echo the benchmarks' progress output")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {' '.join(unknown)}: choose from "
                     + " ".join(BENCHMARKS))
    args.before_src = args.before_src.resolve()
    args.after_src = args.after_src.resolve()
    for side in SIDES:
        src = getattr(args, f"{side}_src")
        if not (src / "weightinit" / "__init__.py").is_file():
            parser.error(f"--{side}-src {src} has no weightinit/__init__.py"
                         + (" (create it: git worktree add /tmp/wi-before ebeb0ae)"
                            if side == "before" else ""))
    if args.before_src == args.after_src:
        parser.error("--before-src and --after-src are the same folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    benchmarks = list(dict.fromkeys(args.benchmarks))
    with tempfile.TemporaryDirectory(prefix="wi-compare-") as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        sections = []
        for name in benchmarks:
            extra = (SMOKE[name] if args.smoke else []) \
                + ([] if args.with_mmengine else NO_MMENGINE[name]) \
                + shlex.split(getattr(args, f"{name}_args"))
            sides = {side: Side(getattr(args, f"{side}_src")) for side in SIDES}
            for r in range(args.rounds):
                order = SIDES if r % 2 == 0 else SIDES[::-1]
                for side in order:
                    s = sides[side]
                    data, wall = run_once(args.python, name, side, s.src, extra, out_dir, r,
                                          args.timeout, args.verbose)
                    s.wall.append(wall)
                    s.meta = data
                    s.files.update([data["weightinit_file"],
                                    *data.get("worker_weightinit_files", [])])
                    for case in data["cases"]:
                        if case.get("seconds") is not None:
                            s.seconds.setdefault(case["name"], []).append(case["seconds"])
                        if case.get("peak_per_param") is not None:
                            s.peak.setdefault(case["name"], []).append(case["peak_per_param"])
                    print(f"[{name}] round {r + 1}/{args.rounds} {side}: {wall:.1f}s",
                          file=sys.stderr, flush=True)
            before, after = sides["before"], sides["after"]
            text = [f"**{TITLES[name]}: before vs after**", "", time_table(before, after,
                                                                           args.hide_ref)]
            peaks = peak_table(before, after)
            if peaks:
                text += ["", peaks]
            meta = after.meta
            text += ["", f"- before: `{before.src}` ({describe_tree(before.src)}); after: "
                         f"`{after.src}` ({describe_tree(after.src)}); imported: "
                         + ", ".join(f"`{f}`" for f in sorted(before.files | after.files)) + ".",
                     f"- `{Path(args.python).name} benchmarks/{BENCHMARKS[name]} "
                     f"{shlex.join(extra)}`; {args.rounds} interleaved round(s) per side, "
                     "each cell the median over rounds of the run's own medians; "
                     f"torch {meta.get('torch')}, Python {meta.get('python', '?')}"
                     + (f", {meta['threads']} torch thread(s)" if "threads" in meta else "")
                     + f"; wall per run: before {statistics.median(before.wall):.0f}s, "
                       f"after {statistics.median(after.wall):.0f}s.",
                     "- `(ref)` rows run no weightinit code: their after/before is the noise."]
            sections.append("\n".join(text))
            print(sections[-1] + "\n", flush=True)
        if args.keep:
            print(f"runs kept in {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
