"""Readers that turn each source format into normalized problem rows.

Row schema (`problems/`): problem_id, question, gold_answer, gold_solution, source, split, num_steps.
A row that cannot be used becomes a reject with a reason; nothing here raises on bad rows.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Iterator

import fsspec

from hsdpo.config import InputError
from hsdpo.configbase import first_line
from hsdpo.data.config import SourceConfig
from hsdpo.data.synthetic import generate
from hsdpo.verifier.answers import extract_answer

HUB_IDS = {"gsm8k": "openai/gsm8k", "metamathqa": "meta-math/MetaMathQA", "math": "HuggingFaceH4/MATH-500"}
HUB_CONFIGS = {"openai/gsm8k": "main"}
# field names per format: (question, solution)
FIELDS = {"gsm8k": ("question", "answer"), "math": ("question", "answer"), "metamathqa": ("query", "response"), "synthetic": ("question", "answer")}

Reject = dict[str, Any]
MAX_STEPS = 2**63 - 1  # what an int64 column holds


def read_json_records(path: str) -> Iterator[dict[str, Any] | Reject]:
    """JSONL (one object a line) or a JSON array, UTF-8 (a byte-order mark is allowed), a local path
    or a URI (s3://, gs://). A bad line (not JSON, not UTF-8) is yielded as a reject, not raised; an
    array that does not parse or decode is an `InputError`."""
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.isfile(p):
        raise FileNotFoundError(f"data file not found: {path}")
    with fs.open(p, "rb") as f:
        chunk = f.read(1 << 16).removeprefix(codecs.BOM_UTF8)
        while chunk and not chunk.strip():  # only whitespace so far
            chunk = f.read(1 << 16)
        f.seek(0)
        if chunk[:4] == b"PAR1":
            raise InputError(f"data file {path} is Parquet; sources are JSON or JSONL (one object a line)")
        if chunk.lstrip()[:1] == b"[":
            data = f.read()
            try:
                records = json.loads(data.decode("utf-8-sig"))
            except UnicodeDecodeError as err:
                raise InputError(f"data file {path} is not UTF-8: byte {err.start} is {data[err.start]:#04x}") from None
            except json.JSONDecodeError as err:
                raise InputError(f"data file {path} is not valid JSON: {err.msg} at line {err.lineno}") from None
            except RecursionError:
                raise InputError(f"data file {path} is not usable JSON: nested too deeply") from None
            for rec in records:
                yield rec if isinstance(rec, dict) else {"__reject__": "not_an_object", "row": rec}
            return
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield {"__reject__": "bad_encoding", "row": f"line {lineno}: not UTF-8 at byte {err.start}: "
                       + raw[:200].decode("utf-8", errors="replace")}
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                yield {"__reject__": "bad_json", "row": f"line {lineno}: {line[:200]}"}
                continue
            yield rec if isinstance(rec, dict) else {"__reject__": "not_an_object", "row": rec}


def read_hub(src: SourceConfig) -> Iterator[dict[str, Any]]:
    from datasets import load_dataset

    hub_id = src.hub_id or HUB_IDS[src.name]
    try:
        ds = load_dataset(hub_id, HUB_CONFIGS.get(hub_id), split=src.hub_split)
    except Exception as err:  # noqa: BLE001 -- offline, unknown dataset or split, gated
        raise InputError(f"data source {src.name}: hub dataset {hub_id} (split {src.hub_split}) cannot be loaded"
                         f" ({first_line(err, 200)}); a local copy goes in its path") from None
    yield from ds


def count_steps(solution: str) -> int:
    """GSM8K-style: calculator annotations; otherwise non-empty lines before the answer line."""
    ann = solution.count("<<")
    if ann:
        return ann
    lines = [ln for ln in solution.splitlines() if ln.strip() and not re.match(r"\s*(####|The answer is)", ln)]
    return max(len(lines), 1)


def row_steps(value: Any, solution: str) -> int | None:
    """A row's own `num_steps` (absent, null or 0: counted from the solution), or None when it is no
    whole number of steps ("many", 2.5, NaN, a list, a negative or an int64-overflowing count)."""
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None or value == 0 or value == "":
        return count_steps(solution)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_STEPS:
        return None
    return value


def _utf8(text: str) -> bool:
    """False for a lone surrogate (JSON "\\ud800"), which a Parquet string cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize(rec: dict[str, Any], src: SourceConfig, index: int, id_prefix: str | None = None) -> dict[str, Any]:
    """One raw record -> a problem row, or a reject dict with `reason`. Ids are
    `<id_prefix>-<index>`, the prefix `name-split-seed` unless the data stage gives another."""
    if "__reject__" in rec:
        return {"reason": rec["__reject__"], "row": rec.get("row"), "source": src.name}
    qkey, skey = FIELDS[src.name]
    if src.name == "math" and "problem" in rec and "solution" in rec:  # the hub's MATH-500 fields
        qkey, skey = "problem", "solution"
    question, solution = rec.get(qkey), rec.get(skey)
    if not isinstance(question, str) or not isinstance(solution, str):
        return {"reason": f"missing_field:{qkey if not isinstance(question, str) else skey}", "row": rec, "source": src.name}
    if not question.strip() or not solution.strip():
        return {"reason": "empty_text", "row": rec, "source": src.name}
    if not _utf8(question) or not _utf8(solution):
        return {"reason": "bad_text", "row": rec, "source": src.name}
    extraction = extract_answer(solution)
    gold = extraction.answer
    if skey == "solution" and isinstance(rec.get("answer"), str) and rec["answer"].strip():
        # the hub's MATH-500 states the answer in a field of its own: the solution's prose may say
        # "the answer is ..." before its \boxed{} (`3! \times 5! = \boxed{720}` read whole)
        gold = rec["answer"].strip()
    elif gold is None or extraction.rule == "last_number" and src.name != "math":
        return {"reason": "unparseable_gold", "row": rec, "source": src.name}
    steps = row_steps(rec.get("num_steps"), solution)
    if steps is None:
        return {"reason": "bad_num_steps", "row": rec, "source": src.name}
    label = src.name if src.name != "metamathqa" else f"metamathqa/{rec.get('type', 'unknown')}"
    if not _utf8(label):
        return {"reason": "bad_text", "row": rec, "source": src.name}
    return {
        "problem_id": f"{id_prefix or default_id_prefix(src)}-{index:07d}",
        "question": question.strip(),
        "gold_answer": gold,
        "gold_solution": solution.strip(),
        "source": label,
        "split": src.split,
        "num_steps": steps,
    }


def default_id_prefix(src: SourceConfig) -> str:
    return f"{src.name}-{src.split}-{src.seed}"


def load_source(src: SourceConfig, run_seed: int,
                id_prefix: str | None = None) -> tuple[list[dict[str, Any]], list[Reject]]:
    if src.name == "synthetic":
        records: Any = generate(src.synthetic, seed=run_seed * 1_000_003 + src.seed)
    elif src.path:
        records = read_json_records(src.path)
    else:
        records = read_hub(src)
    rows, rejects = [], []
    for i, rec in enumerate(records):
        if src.limit is not None and len(rows) >= src.limit:
            break
        out = normalize(rec, src, i, id_prefix)
        (rejects if "reason" in out else rows).append(out)
    return rows, rejects
