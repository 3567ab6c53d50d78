"""The math-verify child process: reads JSON requests on stdin, writes one JSON reply per line.

Started by `hsdpo.verifier.symbolic` (loaded by path, see `SymbolicWorker._command`); it is
killed and respawned whenever a comparison overruns its deadline, which is how the verifier
bounds sympy on any thread (math-verify's own timeout needs SIGALRM, i.e. the main thread).
Only LaTeX extraction is enabled: math-verify's plain-expression path calls sympy's
`parse_expr` (an `eval`) on the text, which untrusted input must never reach.
"""

from __future__ import annotations

import json
import os
import sys


def _limit_memory() -> None:
    mb = int(os.environ.get("HSDPO_MVCHILD_MEMORY_MB", "0") or 0)
    if mb > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the verifier process dies, even if stuck inside sympy."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_PRIMERS = [
    ("$72$", "$NaN$"),
    ("$\\frac{\\pi}{2}$", "$x^2 + 1$"),
    ("$(1, 2]$", "$\\sqrt{2}$"),
    ("$\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}$", "$(1, 2)$"),
]


def _wrap(s: str) -> str:
    return s if "$" in s or "\\boxed" in s else f"${s}$"


def main() -> None:
    _die_with_parent()
    _limit_memory()
    import logging

    logging.disable(logging.CRITICAL)  # math-verify warns once about disabled timeouts
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig()]
    # First uses build the ANTLR parser and sympy's caches (~0.5 s): pay that before saying ready.
    for gold, pred in _PRIMERS:
        verify(parse(gold, extraction_config=config), parse(pred, extraction_config=config), timeout_seconds=None)
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        req = None
        try:
            req = json.loads(line)
            gold = parse(_wrap(req["gold"]), extraction_config=config, parsing_timeout=None)
            pred = parse(_wrap(req["pred"]), extraction_config=config, parsing_timeout=None)
            equal = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
            reply = {"id": req["id"], "equal": equal, "gold_parsed": bool(gold), "pred_parsed": bool(pred)}
        except Exception:  # noqa: BLE001 - any failure is a reply, the parent turns it into a flag
            reply = {"id": req.get("id", -1) if isinstance(req, dict) else -1, "error": True}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
