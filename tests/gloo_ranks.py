"""Start a worker script as N gloo ranks on 127.0.0.1 (for the multi-process tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Path, world: int, out: Path, checkpoint: Path, timeout_s: float) -> None:
    """Run ``worker RANK WORLD PORT OUT CHECKPOINT`` for every rank and wait (bounded); a new
    port if another process took the free one meanwhile. Fails with the failing rank's log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    for _attempt in range(3):
        port = str(free_port())
        procs = [subprocess.Popen([sys.executable, str(worker), str(r), str(world), port,
                                   str(out), str(checkpoint)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r in range(world)]
        logs = []
        try:
            for p in procs:
                logs.append(p.communicate(timeout=timeout_s)[0])
        finally:
            for p in procs:
                p.kill()
        if not any("EADDRINUSE" in log or "address already in use" in log.lower()
                   for log in logs):
            break
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r][-4000:]}"
