"""Base class for every config model: strict (unknown keys are errors), typed, validated."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}  # protocol -> hsdpo extra with its fsspec driver


def check_location(value: str | None) -> str | None:
    """A local path, or a URI whose filesystem fsspec can open on this machine. `gs://...` without
    gcsfs, or an unknown scheme, is then a one-line config error, not a traceback inside a stage."""
    if value is None or "://" not in value:
        return value
    import fsspec

    protocol = value.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        extra = f": pip install 'hsdpo[{EXTRAS[protocol]}]'" if protocol in EXTRAS else ""
        raise ValueError(f"{protocol}:// needs a package that is not installed ({err}){extra}") from None
    except ValueError:
        raise ValueError(f"no filesystem is known for {protocol}://") from None
    return value


Location = Annotated[str, AfterValidator(check_location)]


class StrictModel(BaseModel):
    """A config section: unknown keys and wrong types are one-line errors naming the key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
