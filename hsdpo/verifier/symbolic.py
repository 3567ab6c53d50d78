"""Symbolic answer equivalence (math-verify) under a hard deadline, on any thread.

math-verify's timeout is SIGALRM-based and only works on a main thread; sympy can also spin
in C code no signal interrupts. So the comparison runs in one small persistent child process
(`mvchild`) per verifier process: a request is a JSON line, the reply must arrive before the
caller's deadline, and a late child is killed and respawned. The child starts on first use or
on `warmup()` (about a second: importing sympy), so pipelines call `warmup()` once up front.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


_CHILD = Path(__file__).with_name("mvchild.py")


@dataclass(frozen=True)
class SymbolicResult:
    equal: bool
    status: str  # "ok" | "timeout" | "unavailable" (child still starting) | "error"
    pred_parsed: bool = False


class SymbolicWorker:
    """One math-verify child process, used by one caller at a time."""

    def __init__(self, memory_mb: int = 2048) -> None:
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.buf = b""
        self.next_id = 0
        self.owner = os.getpid()

    def _command(self) -> list[str]:
        """`python -I` with this process's sys.path, loading mvchild.py by path: no package
        __init__ (numpy, pydantic) in the child, and no module of this folder shadowing another."""
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        code = (
            f"import sys; sys.path[:] = {paths!r}; import importlib.util as u; "
            f"s = u.spec_from_file_location('hsdpo_mvchild', {str(_CHILD)!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); m.main()"
        )
        return [sys.executable, "-I", "-c", code]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, HSDPO_MVCHILD_MEMORY_MB=str(self.memory_mb))
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return env

    def start(self) -> None:
        if os.getpid() != self.owner:  # inherited across fork: the child belongs to the parent
            self.proc, self.owner = None, os.getpid()
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self._env(),
            start_new_session=True,
        )
        self.ready, self.buf = False, b""

    def kill(self) -> None:
        if self.proc is not None and os.getpid() == self.owner:
            self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
        self.proc, self.ready, self.buf = None, False, b""

    def _readline(self, deadline: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError("math-verify child exited")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, deadline: float) -> bool:
        self.start()
        if not self.ready:
            try:
                self.ready = self._readline(deadline) is not None
            except (EOFError, ValueError):
                self.kill()
        return self.ready

    def compare(self, gold: str, pred: str, deadline: float) -> SymbolicResult:
        try:
            if not self.wait_ready(deadline):
                return SymbolicResult(False, "unavailable")
            self.next_id += 1
            req = json.dumps({"id": self.next_id, "gold": gold, "pred": pred}) + "\n"
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(req.encode())
            self.proc.stdin.flush()
            reply = self._readline(deadline)
        except (OSError, EOFError, ValueError):
            self.kill()
            self.start()
            return SymbolicResult(False, "error")
        if reply is None:  # deadline passed mid-comparison: the child may be stuck in sympy
            self.kill()
            self.start()
            return SymbolicResult(False, "timeout")
        if reply.get("error") or reply.get("id") != self.next_id:
            return SymbolicResult(False, "error")
        return SymbolicResult(bool(reply["equal"]), "ok", bool(reply.get("pred_parsed")))


_WORKER = SymbolicWorker()
_LOCK = threading.Lock()
atexit.register(_WORKER.kill)


def symbolic_equal(gold: str, pred: str, deadline: float, memory_mb: int = 2048) -> SymbolicResult:
    """math-verify's `verify(parse(gold), parse(pred))` (LaTeX extraction), finished by `deadline`."""
    if not _LOCK.acquire(timeout=max(0.0, deadline - time.monotonic())):
        return SymbolicResult(False, "timeout")
    try:
        _WORKER.memory_mb = memory_mb
        return _WORKER.compare(gold, pred, deadline)
    finally:
        _LOCK.release()


def warmup(timeout_s: float = 60.0) -> bool:
    """Start the math-verify child and wait until it is ready; True when it is."""
    with _LOCK:
        return _WORKER.wait_ready(time.monotonic() + timeout_s)


def shutdown() -> None:
    """Stop the child process (it also exits on its own when this process ends)."""
    with _LOCK:
        _WORKER.kill()
