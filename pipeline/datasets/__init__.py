"""Data sets shipped inside the package, named in params as `builtin:<name>`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from pipeline.errors import SourceError


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    file: str
    sha256: str
    licence: str
    citation: str


BUILTIN = {
    "bike_sharing": BuiltinDataset(
        name="bike_sharing",
        file="bike_sharing/hour.csv",
        sha256="e03de4ee4ef4dc376ac6e04bf829673c6269e8eba5c60fa121640fa2f829504f",
        licence="CC BY 4.0",
        citation=(
            "Fanaee-T & Gama (2013), Event labeling combining ensemble detectors and "
            "background knowledge, Progress in Artificial Intelligence"
        ),
    ),
}


def builtin_bytes(name: str) -> bytes:
    """The shipped file's bytes, after checking them against the recorded SHA-256."""
    dataset = BUILTIN.get(name)
    if dataset is None:
        known = ", ".join(f"builtin:{key}" for key in sorted(BUILTIN))
        raise SourceError(f"data.source: no built-in data set {name!r} (available: {known})")
    payload = resources.files(__package__).joinpath(dataset.file).read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != dataset.sha256:
        raise SourceError(
            f"built-in data set {name!r} is corrupt (SHA-256 {digest[:12]}..., expected "
            f"{dataset.sha256[:12]}...): reinstall driftline"
        )
    return payload
