"""`POST /explain`: the answer and its OpenAPI entry, over `pipeline.explain`.

The body is /predict's (one record or `{"records": [...]}`, source rows as
`pipeline.serving.parse_request` validates them), up to EXPLAIN_MAX_RECORDS records.
An xgboost model is explained by TreeSHAP on its margin, with the native model of the
version (loaded on the first /explain, never on /predict's path); any other family,
or an xgboost version whose native folder is not at hand, by the permutation method
on the ONNX export /predict serves, against one row with every feature missing.
Answers are seeded: the same record gets the same explanation.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.explain import explain_arrays
from pipeline.serving import REQUEST_ID, logged_inputs, model_rows, records_body

if TYPE_CHECKING:
    from pydantic import BaseModel

    from pipeline.config import ServeConfig
    from pipeline.models import TabularModel
    from pipeline.onnx_model import OnnxModel
    from pipeline.serving import ServedModel

logger = logging.getLogger(__name__)

# Records one /explain request may hold: each costs `permutations * (features + 1)` rows
# with the permutation method, scored in the request's thread.
EXPLAIN_MAX_RECORDS = 100


def explained_model(served: ServedModel) -> TabularModel | OnnxModel:
    """What /explain explains for `served`: an xgboost model's booster, for TreeSHAP
    (loaded from the version's native folder on first use when serving did not keep
    it), else the ONNX export /predict scores, with the permutation method, so that
    the explained output is the one served (and torch is never imported to serve)."""
    if served.model.family != "xgboost":
        return served.model
    if served.native is not None:
        return served.native
    if served.native_folder is not None:
        try:
            from pipeline.models import load_model

            return load_model(served.native_folder)
        except Exception as exc:  # a host without xgboost, a damaged folder: ONNX explains
            logger.warning("explain: v%s native model not loaded: %s", served.version, exc)
    return served.model


def explained_records(
    served: ServedModel, records: list[BaseModel], top: int = 10
) -> dict[str, Any]:
    """The /explain answer: per record its `top` contributions by size, with the value
    each feature had as the model saw it; `rest` sums the ones not shown, so that
    `base_value + sum(contributions) + rest == output`."""
    sent, rows, flagged = model_rows(served, records)
    explanation = explain_arrays(served.explained, served.features.record_arrays(rows))
    classes = served.model.classes
    id_field = REQUEST_ID not in served.features.columns
    items = []
    for position, row in enumerate(sent):
        given = row.get(REQUEST_ID) if id_field else None
        item: dict[str, Any] = {"id": str(given) if given is not None else uuid.uuid4().hex}
        if explanation.class_codes is not None:
            label = classes[int(explanation.class_codes[position])]
            item["class"] = label.item() if isinstance(label, np.generic) else label
        values = explanation.contributions[position]
        numbers = (*values, explanation.base[position], explanation.output[position])
        flags = {name: flag.message for name, flag in flagged[position].items()}
        if np.isfinite(numbers).all():
            shown = explanation.top(position, top)
            inputs = logged_inputs(rows[position], served.features)
            item["base_value"] = float(explanation.base[position])
            item["output"] = float(explanation.output[position])
            item["contributions"] = [
                {"feature": name, "value": inputs[name], "contribution": value}
                for name, value in shown
            ]
            item["rest"] = float(values.sum() - sum(value for _, value in shown))
        else:
            item.update(base_value=None, output=None, contributions=[], rest=None)
            flags["explanation"] = "the model's output for this record is not a finite number"
        if flags:
            item["warnings"] = flags
        items.append(item)
    return {
        "model_version": served.version,
        "method": explanation.method,
        "scale": explanation.scale,
        "explanations": items,
    }


def explain_schema(
    schema: dict[str, Any], served: ServedModel, limits: ServeConfig
) -> dict[str, Any]:
    """`schema` (with /predict's bodies already described) with /explain's request,
    the same records as /predict, and its answer."""
    number_or_null = {"type": ["number", "null"]}
    value = {"type": ["number", "string", "null"]}
    contribution = {
        "type": "object",
        "properties": {
            "feature": {"type": "string"},
            "value": {**value, "description": "the feature as the model saw it"},
            "contribution": {"type": "number"},
        },
        "required": ["feature", "value", "contribution"],
    }
    explanation: dict[str, Any] = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "base_value": number_or_null,
            "output": {
                **number_or_null,
                "description": "base_value + every contribution (those shown and rest)",
            },
            "contributions": {"type": "array", "items": contribution},
            "rest": {**number_or_null, "description": "the contributions not shown"},
            "warnings": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["id", "base_value", "output", "contributions", "rest"],
    }
    if served.model.task != "regression":
        explanation["properties"]["class"] = {
            "type": ["number", "string", "integer", "boolean"],
            "description": "the class explained: the positive one, or the predicted one",
        }
        explanation["required"].append("class")
    response = {
        "title": "ExplanationResponse",
        "type": "object",
        "properties": {
            "model_version": {"type": "string"},
            "method": {"type": "string", "enum": ["tree_shap", "permutation"]},
            "scale": {"type": "string", "description": "what output is explained"},
            "explanations": {"type": "array", "items": explanation},
        },
        "required": ["model_version", "method", "scale", "explanations"],
    }
    # Inline, not components: /predict's schema stays as it was without /explain.
    most = min(limits.max_batch, EXPLAIN_MAX_RECORDS)
    problem = {"description": "", "content": {"application/json": {"schema": {"type": "object"}}}}
    operation = schema["paths"]["/explain"]["post"]
    operation["requestBody"] = records_body(served)
    operation["responses"] = {
        "200": {
            "description": "per record, the largest contributions to the explained output",
            "content": {"application/json": {"schema": response}},
        },
        "413": {**problem, "description": f"over {most} records or the body limit"},
        "422": {**problem, "description": "a record that does not match the model's inputs"},
    }
    return schema
