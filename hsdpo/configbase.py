"""Base class for every config model: strict (unknown keys are errors), typed, validated; and
`first_line`, how an exception reads inside a one-line config or input error."""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict


def first_line(err: BaseException, limit: int | None = None) -> str:
    """An exception as it goes inside a one-line error: its type and the first line of its message
    (cut at `limit` characters); the type alone when the message is empty."""
    first = (str(err).strip().splitlines() or [""])[0][:limit]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}  # protocol -> hsdpo extra with its fsspec driver


def check_location(value: str | None) -> str | None:
    """A local path, or a URI whose filesystem fsspec can open on this machine. `gs://...` without
    gcsfs, an unknown scheme, or a scheme with nothing after it is then a one-line config error, not
    a traceback inside a stage."""
    if value is None or "://" not in value:
        return value
    import fsspec

    protocol, rest = value.split("://", 1)
    if not rest.strip("/"):  # `s3://` alone: every stage folder would become a bucket of its own
        raise ValueError(f"{value} names no bucket or folder")
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        extra = f": pip install 'hsdpo[{EXTRAS[protocol]}]'" if protocol in EXTRAS else ""
        raise ValueError(f"{protocol}:// needs a package that is not installed ({err}){extra}") from None
    except ValueError:
        raise ValueError(f"no filesystem is known for {protocol}://") from None
    return value


Location = Annotated[str, AfterValidator(check_location)]


# `Field(..., json_schema_extra=RUN_ONLY)`: a setting of how a stage runs (retries, checkpoint
# cadence, log lines) that does not change what it writes; left out of the hash that decides whether
# a finished stage is current, so changing it re-runs nothing.
RUN_ONLY = {"run_only": True}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (itself, in a list, or optional), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def without_run_only(model: type[BaseModel], data: Any) -> Any:
    """`data` (a JSON dump of `model`) less its RUN_ONLY fields, at any depth. Keys the model does
    not know (a manifest written by another version) stay."""
    if isinstance(data, list):
        return [without_run_only(model, x) for x in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        f = model.model_fields.get(key)
        if f is not None and (f.json_schema_extra or {}).get("run_only"):
            continue
        sub = _model_in(f.annotation) if f is not None else None
        out[key] = without_run_only(sub, value) if sub is not None else value
    return out


class StrictModel(BaseModel):
    """A config section: unknown keys and wrong types are one-line errors naming the key. No float
    setting takes inf or NaN (`.inf` in YAML): each would pass a bound such as `gt=0` and turn the
    scores, weights or a time budget into NaN or an overflow later, one row at a time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)
