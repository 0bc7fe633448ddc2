"""The champion's feature importance, as it travels with a registered version.

evaluate measures permutation importance on val rows (`reports/evaluation.json`,
`importance`); deploy registers it with the version, as a folder holding
`feature_importance.json`, beside the reference sample; the monitor reads it back to
weigh each column's drift by how much the model relies on it. A version registered
before this file existed carries none, and the monitor then weighs columns equally.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DataError
from pipeline.registry import IMPORTANCE_FILE

IMPORTANCE_FORMAT = "driftline-feature-importance"
IMPORTANCE_VERSION = 1


@dataclass(frozen=True)
class FeatureImportance:
    """How much `metric` worsens when each feature is shuffled (positive: the model
    relies on it), by feature name."""

    values: Mapping[str, float] = field(default_factory=dict)
    metric: str = ""
    method: str = "permutation"

    @classmethod
    def from_evaluation(cls, evaluation: Mapping[str, Any]) -> FeatureImportance:
        """From evaluate's report: its `importance` records and `primary_metric`. A
        value evaluate could not compute (null) counts as no importance."""
        records = evaluation.get("importance")
        if not isinstance(records, list):
            raise DataError(
                "the evaluation report holds no feature importance: re-run evaluate "
                "(dvc repro -f -s evaluate)"
            )
        values = {str(record["feature"]): _finite(record.get("importance")) for record in records}
        return cls(values=values, metric=str(evaluation.get("primary_metric") or ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": IMPORTANCE_FORMAT,
            "version": IMPORTANCE_VERSION,
            "method": self.method,
            "metric": self.metric,
            "importance": dict(self.values),
        }

    def write(self, folder: Path) -> Path:
        """`folder/feature_importance.json`; the folder is created."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / IMPORTANCE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> FeatureImportance:
        """What `write` wrote; a damaged file is a `DataError` that says so."""
        try:
            body = json.loads(Path(path).read_text(encoding="utf-8"))
            if body.get("format") != IMPORTANCE_FORMAT:
                raise ValueError("not a feature importance file")
            if body.get("version") != IMPORTANCE_VERSION:
                raise ValueError(f"version {body.get('version')!r}, expected 1")
            values = {str(name): _finite(value) for name, value in body["importance"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{path} is a damaged feature importance file ({exc}): deploy the model again"
            ) from None
        return cls(values=values, metric=str(body.get("metric", "")), method=body["method"])


def _finite(value: Any) -> float:
    number = float(value) if isinstance(value, int | float) else 0.0
    return number if math.isfinite(number) else 0.0
