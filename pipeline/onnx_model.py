"""ONNX export of a `TabularModel`, and a runner that scores with onnxruntime alone.

`export_onnx` turns any family into one ONNX graph with a dynamic batch dimension:
xgboost through onnxmltools (input: `FeatureSpec.encoded_matrix`), scikit-learn through
skl2onnx with the whole Pipeline inside the graph (one input per column), torch through
`torch.onnx.export` of the learner's `ScoringModule` (inputs `numeric` and `codes`), and
an ensemble as its members' graphs side by side in one graph (`_export_ensemble`).
Every graph returns what `TabularModel.predict_raw` returns: regression values, or class
probabilities in `classes` order. What the model adds after its learner (expm1 for a
log1p target, the probability calibrator) is appended to the graph as plain ONNX ops.

`OnnxModel` is what serving loads: ONNX bytes plus the model's JSON metadata, never a
pickle. Its inputs are the `FeatureArrays` training builds (from a frame, or from
request records without pandas), so the two agree on gaps and unseen categories.
Heavy libraries are imported inside functions, so importing this module imports none
of onnx, onnxruntime or torch.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.features import FeatureArrays, FeatureSpec
from pipeline.models.base import Decisions

if TYPE_CHECKING:
    from pipeline.models import TabularModel

# onnxmltools' xgboost converter supports opsets up to 15 (measured).
XGBOOST_OPSET = 15
# skl2onnx: the default opset, falling back to these when a converter rejects it.
SKLEARN_OPSETS: tuple[int | None, ...] = (None, 18, 17, 15)
TORCH_OPSET = 18


class OnnxExportError(RuntimeError):
    """The model could not be turned into an ONNX graph."""


class QuantizationUnsupported(RuntimeError):
    """The graph cannot be quantised to int8; score the float model instead."""


def export_onnx(model: TabularModel) -> bytes:
    """The model as serialised ONNX ModelProto bytes, with a dynamic batch dimension."""
    exporters = {
        "xgboost": _export_xgboost,
        "sklearn": _export_sklearn,
        "torch": _export_torch,
        "ensemble": _export_ensemble,
    }
    if model.family not in exporters:
        raise OnnxExportError(f"no ONNX export for the {model.family!r} family")
    return _with_finish(exporters[model.family](model), model)


def _with_finish(onnx_bytes: bytes, model: TabularModel) -> bytes:
    """The graph with `TabularModel.finish` appended to its output: expm1 for a log1p
    target, or the calibrator's maps (`pipeline.calibration`) on the probabilities."""
    if model.objective != "log1p" and model.calibrator is None:
        return onnx_bytes
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph_model = onnx.load_from_string(onnx_bytes)
    graph = graph_model.graph
    source = graph.output[0]
    nodes: list[Any] = []
    constants: list[Any] = []
    count = [0]

    def name(stem: str) -> str:
        count[0] += 1
        return f"driftline_finish_{stem}_{count[0]}"

    def constant(values: Any, stem: str) -> str:
        tensor = numpy_helper.from_array(np.asarray(values, dtype=np.float32), name(stem))
        constants.append(tensor)
        return tensor.name

    def op(kind: str, inputs: list[str], stem: str, **attributes: Any) -> str:
        out = name(stem)
        nodes.append(helper.make_node(kind, inputs, [out], **attributes))
        return out

    if model.objective == "log1p":
        result = op("Sub", [op("Exp", [source.name], "exp"), constant(1.0, "one")], "expm1")
    else:
        calibrator = model.calibrator
        assert calibrator is not None

        def calibrate(column: int) -> str:
            mapping = calibrator.maps[0 if len(calibrator.maps) == 1 else column]
            index = numpy_helper.from_array(np.asarray([column], dtype=np.int64), name("column"))
            constants.append(index)
            p = op("Gather", [source.name, index.name], "p", axis=1)  # [n, 1]
            if calibrator.method == "sigmoid":
                low, high = constant(1e-6, "low"), constant(1 - 1e-6, "high")
                clipped = op("Min", [op("Max", [p, low], "max"), high], "clip")
                one_minus = op("Sub", [constant(1.0, "one"), clipped], "complement")
                odds = op("Sub", [op("Log", [clipped], "log"), op("Log", [one_minus], "log")], "z")
                scaled = op("Mul", [odds, constant(mapping["a"], "a")], "az")
                return op("Sigmoid", [op("Add", [scaled, constant(mapping["b"], "b")], "azb")], "q")
            # Linear interpolation between knots, flat beyond them: y0 plus, per segment,
            # its slope times how far p reaches into it.
            x, y = np.asarray(mapping["x"]), np.asarray(mapping["y"])
            if len(x) < 2:
                return op(
                    "Add",
                    [
                        op("Mul", [p, constant(0.0, "zero")], "zero"),
                        constant(y[0] if len(y) else 0.5, "y0"),
                    ],
                    "q",
                )
            width = np.diff(x)
            keep = width > 0
            lows, highs = x[:-1][keep], x[1:][keep]
            slopes = (np.diff(y)[keep] / width[keep]).reshape(-1, 1)
            lows_name = constant(lows.reshape(1, -1), "lows")
            reach = op(
                "Sub",
                [
                    op(
                        "Min",
                        [op("Max", [p, lows_name], "max"), constant(highs.reshape(1, -1), "highs")],
                        "min",
                    ),
                    lows_name,
                ],
                "reach",
            )
            return op(
                "Add",
                [op("MatMul", [reach, constant(slopes, "slopes")], "rise"), constant(y[0], "y0")],
                "q",
            )

        width = len(model.classes)
        if len(calibrator.maps) == 1:  # binary: the positive class, then its complement
            positive = calibrate(1)
            negative = op("Sub", [constant(1.0, "one"), positive], "negative")
            result = op("Concat", [negative, positive], "probabilities", axis=1)
        else:
            columns = op("Concat", [calibrate(c) for c in range(width)], "columns", axis=1)
            axes = numpy_helper.from_array(np.asarray([1], dtype=np.int64), name("axes"))
            constants.append(axes)
            total = op("ReduceSum", [columns, axes.name], "total", keepdims=1)
            result = op("Div", [columns, total], "probabilities")
    source_type = source.type.tensor_type
    if source_type.elem_type != TensorProto.FLOAT:
        raise OnnxExportError("the graph's output is not float32: cannot append the finish")
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    if not any(entry.domain in ("", "ai.onnx") for entry in graph_model.opset_import):
        # onnxmltools' tree graphs use the ML domain only; the ops above need the default.
        graph_model.opset_import.append(helper.make_opsetid("", XGBOOST_OPSET))
    shape = (
        [None] if model.task == "regression" and len(source_type.shape.dim) == 1 else [None, None]
    )
    finished = helper.make_tensor_value_info(result, TensorProto.FLOAT, shape)
    del graph.output[:]
    graph.output.append(finished)
    onnx.checker.check_model(graph_model)
    return graph_model.SerializeToString()


def _export_xgboost(model: TabularModel) -> bytes:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    width = len(model.features.numeric) + len(model.features.categorical)
    booster = model.learner.booster  # type: ignore[attr-defined]
    onnx_model = onnxmltools.convert_xgboost(
        booster,
        initial_types=[("features", FloatTensorType([None, width]))],
        target_opset=XGBOOST_OPSET,
    )
    return _keep_output(onnx_model, "probabilities" if model.task != "regression" else None)


def _export_sklearn(model: TabularModel) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    pipeline = model.learner.pipeline  # type: ignore[attr-defined]
    initial_types: list[tuple[str, Any]] = [
        (column, FloatTensorType([None, 1])) for column in model.features.numeric
    ]
    initial_types += [
        (column, StringTensorType([None, 1])) for column in model.features.categorical
    ]
    estimator = pipeline.steps[-1][1]
    options = {id(estimator): {"zipmap": False}} if model.task != "regression" else None
    errors = []
    for opset in SKLEARN_OPSETS:
        try:
            onnx_model = convert_sklearn(
                pipeline, initial_types=initial_types, options=options, target_opset=opset
            )
        except Exception as exc:  # try the next opset; report all at the end
            errors.append(f"opset {opset}: {exc}")
            continue
        keep = "probabilities" if model.task != "regression" else "variable"
        return _keep_output(onnx_model, keep)
    raise OnnxExportError("skl2onnx could not convert the pipeline: " + "; ".join(errors))


def _export_torch(model: TabularModel) -> bytes:
    import torch

    module = model.learner.export_module()  # type: ignore[attr-defined]
    n_num, n_cat = len(model.features.numeric), len(model.features.categorical)
    rows = 2
    numeric = torch.zeros((rows, n_num), dtype=torch.float32)
    codes = torch.zeros((rows, n_cat), dtype=torch.int64)
    batch = torch.export.Dim("batch")
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # Both inputs share the batch dimension, which the exporter reports as a warning.
        warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            module,
            (numeric, codes),
            str(path),
            input_names=["numeric", "codes"],
            output_names=["output"],
            dynamic_shapes={"numeric": {0: batch}, "codes": {0: batch}},
            opset_version=TORCH_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        return path.read_bytes()


# The ensemble graph's inputs, shared by its members: xgboost's encoded matrix, torch's
# numeric and codes, and scikit-learn's one input per column (by position in
# `FeatureSpec.columns`), renamed so that no column name can clash with another input.
ENSEMBLE_ENCODED, ENSEMBLE_NUMERIC, ENSEMBLE_CODES = (
    "ensemble_encoded",
    "ensemble_numeric",
    "ensemble_codes",
)
ENSEMBLE_COLUMN = "ensemble_column_{}"


def _ensemble_input(family: str, name: str, position: int) -> str:
    if family == "xgboost":
        return ENSEMBLE_ENCODED
    if family == "torch":
        return {"numeric": ENSEMBLE_NUMERIC, "codes": ENSEMBLE_CODES}[name]
    return ENSEMBLE_COLUMN.format(position)


def _export_ensemble(model: TabularModel) -> bytes:
    """One graph: each member's raw graph (before the finish) under a prefix of its
    family, its inputs renamed to the shared ones, then the combiner as plain ops (blend:
    Mul and Add; stack: MatMul, Add and Sigmoid or Softmax). The default domain's opset
    is the members' highest (lower ones go through onnx's version converter); other
    domains and the IR version take the highest any member declares."""
    import dataclasses

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pipeline.models.ensemble_model import EPSILON

    learner = model.learner
    exporters = {"xgboost": _export_xgboost, "sklearn": _export_sklearn, "torch": _export_torch}
    graphs = []
    for family in learner.member_names:  # type: ignore[attr-defined]
        member = dataclasses.replace(
            model,
            family=family,
            learner=learner.members[family],  # type: ignore[attr-defined]
            objective=None,
            calibrator=None,
        )
        graphs.append((family, onnx.load_from_string(exporters[family](member))))
    opsets: dict[str, int] = {}
    for _, graph_model in graphs:
        for entry in graph_model.opset_import:
            domain = "" if entry.domain == "ai.onnx" else entry.domain
            opsets[domain] = max(opsets.get(domain, 0), entry.version)
    opsets[""] = max(opsets.get("", 0), TORCH_OPSET if "torch" in dict(graphs) else 13)

    nodes: list[Any] = []
    initializers: list[Any] = []
    inputs: dict[str, Any] = {}
    columns: list[str] = []  # each member's output, as [n, 1] or [n, k]
    width = 1 if model.task == "regression" else len(model.classes)
    constants = [0]

    def constant(values: Any, stem: str, dtype: Any = np.float32) -> str:
        constants[0] += 1
        tensor = numpy_helper.from_array(
            np.asarray(values, dtype=dtype), f"ensemble_{stem}_{constants[0]}"
        )
        initializers.append(tensor)
        return tensor.name

    def op(kind: str, sources: list[str], stem: str, **attributes: Any) -> str:
        constants[0] += 1
        out = f"ensemble_{stem}_{constants[0]}"
        nodes.append(helper.make_node(kind, sources, [out], **attributes))
        return out

    for family, graph_model in graphs:
        graph_model = _at_default_opset(graph_model, opsets[""])
        prefix = f"{family}_"
        original = [entry.name for entry in graph_model.graph.input]
        graph_model = onnx.compose.add_prefix(graph_model, prefix)
        graph = graph_model.graph
        renames = {}
        for position, entry in enumerate(graph.input):
            shared = _ensemble_input(family, original[position], position)
            renames[entry.name] = shared
            if shared not in inputs:
                declared = onnx.ValueInfoProto()
                declared.CopyFrom(entry)
                declared.name = shared
                inputs[shared] = declared
        for node in graph.node:
            node.input[:] = [renames.get(name, name) for name in node.input]
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        shape = constant([-1, width], "shape", np.int64)
        columns.append(op("Reshape", [graph.output[0].name, shape], f"{family}_column"))

    combiner = learner.combiner  # type: ignore[attr-defined]
    if combiner.method == "blend":
        weighted = [
            op("Mul", [column, constant(weight, "weight")], "weighted")
            for column, weight in zip(columns, combiner.weights, strict=True)
        ]
        result = weighted[0]
        for term in weighted[1:]:
            result = op("Add", [result, term], "sum")
    else:
        if model.task == "regression":
            stacked = op("Concat", columns, "inputs", axis=1)
        else:
            low, high = constant(EPSILON, "low"), constant(1.0, "high")
            logs = [
                op("Log", [op("Min", [op("Max", [c, low], "max"), high], "clip")], "log")
                for c in columns
            ]
            if model.task == "binary":
                first, second = constant([0], "first", np.int64), constant([1], "second", np.int64)
                logs = [
                    op(
                        "Sub",
                        [
                            op("Gather", [log, second], "log_positive", axis=1),
                            op("Gather", [log, first], "log_negative", axis=1),
                        ],
                        "log_odds",
                    )
                    for log in logs
                ]
            stacked = op("Concat", logs, "inputs", axis=1)
        linear = op(
            "Add",
            [
                op("MatMul", [stacked, constant(combiner.coef, "coef")], "product"),
                constant(combiner.intercept, "intercept"),
            ],
            "linear",
        )
        if model.task == "regression":
            result = linear
        elif model.task == "binary":
            positive = op("Sigmoid", [linear], "positive")
            negative = op("Sub", [constant(1.0, "one"), positive], "negative")
            result = op("Concat", [negative, positive], "probabilities", axis=1)
        else:
            result = op("Softmax", [linear], "probabilities", axis=1)
    if model.task == "regression":
        result = op("Reshape", [result, constant([-1], "flat", np.int64)], "values")
    shape = [None] if model.task == "regression" else [None, width]
    output = helper.make_tensor_value_info(result, TensorProto.FLOAT, shape)
    graph = helper.make_graph(
        nodes, "driftline_ensemble", list(inputs.values()), [output], initializers
    )
    combined = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets.items()],
        ir_version=max(graph_model.ir_version for _, graph_model in graphs),
    )
    onnx.checker.check_model(combined)
    return combined.SerializeToString()


def _at_default_opset(graph_model: Any, version: int) -> Any:
    """The graph with the default domain at `version`: converted by onnx's version
    converter where it can, else declared (the ops the converters emit here, Concat,
    Reshape, Gather and friends, mean the same from opset 11 to 18)."""
    import onnx
    from onnx import version_converter

    current = [entry for entry in graph_model.opset_import if entry.domain in ("", "ai.onnx")]
    if current and current[0].version == version:
        return graph_model
    if current:
        try:
            return version_converter.convert_version(graph_model, version)
        except Exception:  # it knows no ai.onnx.ml ops: declare the version below
            pass
    declared = onnx.ModelProto()
    declared.CopyFrom(graph_model)
    for entry in declared.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = version
    if not current:  # onnxmltools' tree graphs use the ML domain only
        declared.opset_import.append(onnx.helper.make_opsetid("", version))
    return declared


def _keep_output(onnx_model: Any, name: str | None) -> bytes:
    """Drop every graph output but `name` (the converters add labels we do not use)."""
    graph = onnx_model.graph
    if name is not None and len(graph.output) > 1:
        wanted = [output for output in graph.output if output.name == name]
        if not wanted:
            names = [output.name for output in graph.output]
            raise OnnxExportError(f"the ONNX graph has no output {name!r} (outputs: {names})")
        del graph.output[:]
        graph.output.extend(wanted)
    return onnx_model.SerializeToString()


class OnnxModel(Decisions):
    """Scores raw columns with onnxruntime: the `TabularModel` contract for raw outputs
    and labels, without the training libraries or any pickle."""

    def __init__(
        self,
        onnx_bytes: bytes,
        features: FeatureSpec,
        family: str,
        task: str,
        classes: list[Any],
        threshold: float | None = None,
        intra_op_num_threads: int = 0,
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        self.session = onnxruntime.InferenceSession(
            onnx_bytes, options, providers=["CPUExecutionProvider"]
        )
        self.features = features
        self.family = family
        self.task = task
        self.classes = list(classes)
        self.threshold = threshold
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    @classmethod
    def from_model(cls, model: TabularModel, onnx_bytes: bytes, **options: Any) -> OnnxModel:
        """A runner for `onnx_bytes` with `model`'s features, classes and threshold."""
        return cls(
            onnx_bytes,
            model.features,
            model.family,
            model.task,
            model.classes,
            model.threshold,
            **options,
        )

    def inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The graph's inputs for raw columns, built as the family's learner builds them."""
        return self.feeds(self.features.arrays(self.features.prepare(frame)))

    def feeds(self, arrays: FeatureArrays) -> dict[str, np.ndarray]:
        """The graph's inputs for prepared features."""
        if self.family == "xgboost":
            return {self.input_names[0]: arrays.encoded()}
        if self.family == "torch":
            feeds = {"numeric": arrays.numeric, "codes": arrays.codes}
            # The exporter drops an input the graph never reads (a zero-width one).
            return {name: feeds[name] for name in self.input_names}
        if self.family == "ensemble":
            return self._ensemble_feeds(arrays)
        # One input per column, declared in `FeatureSpec.columns` order at export.
        return dict(zip(self.input_names, _column_inputs(arrays), strict=True))

    def _ensemble_feeds(self, arrays: FeatureArrays) -> dict[str, np.ndarray]:
        """The inputs `_export_ensemble` declared (only those its members read)."""
        feeds: dict[str, Any] = {
            ENSEMBLE_ENCODED: arrays.encoded,
            ENSEMBLE_NUMERIC: lambda: arrays.numeric,
            ENSEMBLE_CODES: lambda: arrays.codes,
        }
        if any(name.startswith(ENSEMBLE_COLUMN.format("")) for name in self.input_names):
            for position, column in enumerate(_column_inputs(arrays)):
                feeds[ENSEMBLE_COLUMN.format(position)] = lambda column=column: column
        return {name: feeds[name]() for name in self.input_names}

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        """Regression values (n,), or class probabilities (n, k) in `classes` order."""
        return self.predict_arrays(self.features.arrays(self.features.prepare(frame)))

    def predict_arrays(self, arrays: FeatureArrays) -> np.ndarray:
        """`predict_raw` for prepared features."""
        output = self.session.run([self.output_name], self.feeds(arrays))[0]
        output = np.asarray(output, dtype=np.float64)
        if self.task == "regression":
            return output.reshape(-1)
        if output.ndim == 1 or output.shape[1] == 1:  # P(positive) only
            positive = output.reshape(-1)
            return np.column_stack([1.0 - positive, positive])
        return output


def _column_inputs(arrays: FeatureArrays) -> list[np.ndarray]:
    """scikit-learn's graph inputs: one [n, 1] array per column, numerics then texts."""
    from pipeline.models.sklearn_model import MISSING_CATEGORY

    numeric = arrays.numeric
    columns = [np.ascontiguousarray(numeric[:, [i]]) for i in range(numeric.shape[1])]
    columns += [
        np.array([MISSING_CATEGORY if v is None else v for v in texts], dtype=object).reshape(-1, 1)
        for texts in arrays.texts
    ]
    return columns


def quantize_dynamic_int8(onnx_bytes: bytes) -> bytes:
    """The graph with int8 weights (dynamic quantisation: activations stay float), for
    smaller files and, on large MLPs, faster CPU scoring; measure before serving it.

    Raises `QuantizationUnsupported` when onnxruntime cannot quantise the graph, or
    when it holds no weights it could quantise (tree ensembles, skl2onnx's
    LinearRegressor/LinearClassifier ops), so the caller can keep the float graph.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_from_string(onnx_bytes)
    # The torch exporter records shapes for every value, weights included; the quantiser
    # transposes Gemm weights, and its shape inference then trips on the stale records.
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory() as folder, _quiet_root_logger():
        source, target = Path(folder) / "model.onnx", Path(folder) / "model.int8.onnx"
        source.write_bytes(model.SerializeToString())
        try:
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        except Exception as exc:  # any failure means "keep the float graph"
            raise QuantizationUnsupported(
                f"onnxruntime could not quantise the graph: {exc}"
            ) from exc
        quantised = target.read_bytes()
    if _int8_weights(onnx.load_from_string(quantised)) <= _int8_weights(model):
        raise QuantizationUnsupported("the graph holds no weights that int8 quantisation covers")
    return quantised


def _int8_weights(model: Any) -> int:
    from onnx import TensorProto

    int8 = (TensorProto.INT8, TensorProto.UINT8)
    return sum(tensor.data_type in int8 for tensor in model.graph.initializer)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Hide the quantiser's "consider pre-processing" advice, logged on the root logger."""

    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
