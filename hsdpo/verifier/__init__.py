"""The MathVerifier: pure Python (no ray, torch or deepspeed).

`verify(solution, gold, question=None) -> Verdict` scores one solution; `VerifyBatch` is the
Ray Data `map_batches` callable; `extract_answer` is shared with the data loaders.
"""

from hsdpo.verifier.answers import Extraction, extract_answer
from hsdpo.verifier.batch import VERDICT_COLUMNS, VerifyBatch
from hsdpo.verifier.config import VerifierConfig
from hsdpo.verifier.core import Verdict, verify
from hsdpo.verifier.scores import ErrorProfile
from hsdpo.verifier.symbolic import warmup

__all__ = [
    "VERDICT_COLUMNS",
    "ErrorProfile",
    "Extraction",
    "Verdict",
    "VerifierConfig",
    "VerifyBatch",
    "extract_answer",
    "verify",
    "warmup",
]
