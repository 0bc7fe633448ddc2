"""dvc.yaml is complete: every stage lists the code it runs and the params it reads.

DVC re-runs a stage only when one of its declared deps or params changed, so a file
or a key a stage uses but does not declare is a change `dvc repro` silently skips.
Both lists are derived here from the code, never from a table kept by hand:

- code: the stage's module (`python -m pipeline.stages.<name>`) and every module
  inside `pipeline/` it imports, transitively, read with `ast` (nothing is imported);
- params: the `Params` attributes the stage module reads from `load_params(...)`,
  down to a key where it reads a key, and the whole section where it hands the
  section on to other code.

The last tests run DVC itself on a copy of dvc.yaml: it parses with a params.yaml
that holds only data.source and data.target, and `dvc status` flags exactly the stages
the walk says a change reaches.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline.config import DataConfig, Params
from tests.conftest import QUIET, REPO

PACKAGE = "pipeline"
DVC_YAML = REPO / "dvc.yaml"
STAGE_MODULE = f"python -m {PACKAGE}.stages."
# Settings that choose where a run is recorded (and who may read the store), not what a
# stage computes: like the ENVIRONMENT_OVERRIDES in pipeline/config.py, changing them
# must not re-run training.
# MLFLOW_TRACKING_URI overrides the first without touching params.yaml at all.
# A stage that checks all of params.yaml declares the whole file (`- params.yaml:`).
WHOLE_FILE = ""
PLACE_KEYS = frozenset(
    {"mlflow.tracking_uri", "mlflow.artifact_location", "mlflow.experiment", "stores.private"}
)


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    deps: tuple[str, ...]
    params: tuple[str, ...]


def read_stages() -> list[Stage]:
    stages = []
    for name, body in yaml.safe_load(DVC_YAML.read_text())["stages"].items():
        command = body["cmd"]
        assert command.startswith(STAGE_MODULE), f"{name}: cmd is not {STAGE_MODULE}<name>"
        module = command.removeprefix("python -m ").split()[0]
        params: list[str] = []
        for entry in body.get("params", []):
            # `- key` reads params.yaml; `- params.yaml:` (no keys) all of it, as "";
            # `- other.yaml: [keys]` would read another file.
            if entry == {"params.yaml": None}:
                params.append(WHOLE_FILE)
                continue
            assert isinstance(entry, str), f"{name}: params from a file other than params.yaml"
            params.append(entry)
        stages.append(Stage(name, module, tuple(body.get("deps", [])), tuple(params)))
    return stages


STAGES = read_stages()


# --- the import walk --------------------------------------------------------------------


def module_file(module: str) -> Path | None:
    """The file of a module inside `pipeline/` (a package's `__init__.py`), else None."""
    if module != PACKAGE and not module.startswith(f"{PACKAGE}."):
        return None
    base = REPO.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: `if TYPE_CHECKING:` bodies are skipped (never executed)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and is_type_checking(child.test):
            for node in child.orelse:
                yield node
                yield from runtime_nodes(node)
            continue
        yield child
        yield from runtime_nodes(child)


def imported_names(path: Path) -> set[str]:
    """The dotted names a file imports, at module level or inside functions: relative
    imports resolved, and string literals that are a module's name (`importlib`)."""
    names: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in runtime_nodes(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from a import b`: the submodule a.b where there is one, else a's name b
                submodule = f"{base}.{alias.name}"
                names.add(submodule if module_file(submodule) else base)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith(f"{PACKAGE}.")
        ):
            names.add(node.value)
    return names


def is_inert(path: Path) -> bool:
    """A package `__init__.py` that holds only a docstring and literal assignments:
    running it (as importing a submodule does) cannot change what a stage computes."""
    for node in parse(path).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            continue
        return False
    return True


def with_parents(module: str) -> list[str]:
    """A module and the packages Python runs before it (`a`, `a.b` for `a.b.c`)."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


@cache
def closure(module: str) -> frozenset[Path]:
    """Every file inside `pipeline/` that running `module` can execute."""
    seen: set[Path] = set()
    queue = [module]
    while queue:
        name = queue.pop()
        for part in with_parents(name):
            path = module_file(part)
            if path is None or path in seen:
                continue
            if part != name and is_inert(path):
                continue  # run only as a parent; `from pipeline import x` names it
            seen.add(path)
            queue.extend(imported_names(path))
    return frozenset(seen)


def covers(dep: str, path: Path) -> bool:
    target = (REPO / dep).resolve()
    return path == target or target in path.parents


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.name)
def test_every_module_a_stage_runs_is_a_dep(stage: Stage) -> None:
    files = closure(stage.module)
    assert module_file(stage.module) in files
    missing = sorted(
        relative(path) for path in files if not any(covers(dep, path) for dep in stage.deps)
    )
    assert not missing, f"stage {stage.name}: add to its deps in dvc.yaml: {', '.join(missing)}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.name)
def test_every_code_dep_is_code_the_stage_runs(stage: Stage) -> None:
    """The other way round: a code dep the stage never imports re-runs it for nothing
    (a folder dep counts when the stage runs one of its files)."""
    files = closure(stage.module)
    code = [dep for dep in stage.deps if dep == PACKAGE or dep.startswith(f"{PACKAGE}/")]
    for dep in code:
        assert (REPO / dep).exists(), f"stage {stage.name}: dep {dep} does not exist"
    unused = [dep for dep in code if not any(covers(dep, path) for path in files)]
    assert not unused, f"stage {stage.name}: it imports none of {', '.join(unused)}"


def test_the_walk_sees_function_level_and_dynamic_imports() -> None:
    """The cases a plain top-level walk would miss: `compress` imports the ONNX module
    inside a function, and `pipeline.models` names its families in strings."""
    files = {relative(path) for path in closure("pipeline.stages.compress")}
    assert "pipeline/onnx_model.py" in files  # imported inside compress()
    assert "pipeline/models/torch_model.py" in files  # importlib, by name
    assert "pipeline/models/base.py" in files
    assert "pipeline/__init__.py" not in files  # inert: a docstring and __version__


# --- the params each stage reads --------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """A params key a stage reads: a value, or a section it hands on to other code
    (`section` is then its model, and the other code may read any of its fields)."""

    key: str
    section: type[BaseModel] | None = None


@cache
def parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def attribute_chain(node: ast.AST, tree: ast.AST) -> list[str]:
    """`x.a.b` read from `x`: ["a", "b"]."""
    chain, up = [], parents(tree)
    while isinstance(up.get(node), ast.Attribute) and up[node].value is node:
        node = up[node]
        chain.append(node.attr)
    return chain


def resolve(
    chain: list[str], model: type[BaseModel] = Params, prefix: tuple[str, ...] = ()
) -> set[Read]:
    """The params keys an attribute chain on a params object reads. A property of the
    model (`Params.time_ordered`) reads what its body reads; a method, or a chain that
    stops at a section, hands the whole section on."""
    for attr in chain:
        field = model.model_fields.get(attr)
        if field is None:
            if isinstance(getattr(model, attr, None), property):
                return property_reads(model, attr, prefix)
            break
        prefix = (*prefix, field.alias or attr)
        kind = field.annotation
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return {Read(".".join(prefix))}
        model = kind
    return {Read(".".join(prefix), model)}


def property_reads(model: type[BaseModel], name: str, prefix: tuple[str, ...]) -> set[Read]:
    tree = parse(REPO / "pipeline" / "config.py")
    body = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == model.__name__
    )
    function = next(
        node for node in body.body if isinstance(node, ast.FunctionDef) and node.name == name
    )
    reads: set[Read] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and node.id == "self":
            reads |= resolve(attribute_chain(node, tree), model, prefix)
    return reads


def enclosing_function(node: ast.AST, tree: ast.AST) -> ast.AST:
    up = parents(tree)
    while node in up and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        node = up[node]
    return node


def assigned_name(statement: ast.AST | None) -> ast.Name | None:
    """The one name `name = value` (or `name: T = value`) binds."""
    if isinstance(statement, ast.AnnAssign):
        targets = [statement.target]
    elif isinstance(statement, ast.Assign):
        targets = statement.targets
    else:
        return None
    return targets[0] if len(targets) == 1 and isinstance(targets[0], ast.Name) else None


def params_reads(module: str) -> set[Read]:
    """What the stage module reads from `load_params(...)`: followed through the name
    it is bound to; a use other than an attribute hands all of Params on (key "")."""
    path = module_file(module)
    assert path is not None
    tree = parse(path)
    reads: set[Read] = set()
    for call in runtime_nodes(tree):
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "load_params"
        ):
            continue
        chain = attribute_chain(call, tree)
        bound = assigned_name(parents(tree).get(call))
        if chain:
            reads |= resolve(chain)
        elif bound is not None:
            for node in ast.walk(enclosing_function(call, tree)):
                if isinstance(node, ast.Name) and node.id == bound.id and node is not bound:
                    uses = attribute_chain(node, tree)
                    reads |= resolve(uses) if uses else {Read("", Params)}
        else:
            reads.add(Read("", Params))
    return reads


@cache
def mentioned(module: str) -> frozenset[str]:
    """Every attribute name and string literal in the code a stage runs: the fields of a
    section it hands on that this code can read (by name, or by getattr with a literal)."""
    names: set[str] = set()
    for path in closure(module):
        for node in runtime_nodes(parse(path)):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    return frozenset(names)


def is_covered(key: str, declared: tuple[str, ...]) -> bool:
    return any(
        entry == WHOLE_FILE or key == entry or key.startswith(f"{entry}.") for entry in declared
    )


def needed_keys(stage: Stage) -> set[str]:
    """The keys a stage must declare: each value it reads; for a section it hands on,
    the section, or (where dvc.yaml lists it key by key) each field its code names."""
    needed: set[str] = set()
    if WHOLE_FILE in stage.params:
        return needed
    for read in params_reads(stage.module):
        if read.section is None or is_covered(read.key, stage.params):
            needed.add(read.key)
            continue
        assert read.key, f"stage {stage.name} hands all of Params on: no key can be proven"
        needed |= {
            f"{read.key}.{field.alias or name}"
            for name, field in read.section.model_fields.items()
            if name in mentioned(stage.module) or field.alias in mentioned(stage.module)
        }
    return needed - PLACE_KEYS


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.name)
def test_every_param_a_stage_reads_is_declared(stage: Stage) -> None:
    missing = sorted(key for key in needed_keys(stage) if not is_covered(key, stage.params))
    assert not missing, f"stage {stage.name}: add to its params in dvc.yaml: {', '.join(missing)}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.name)
def test_every_declared_param_is_read(stage: Stage) -> None:
    """A declared key the stage never reads re-runs it for nothing."""
    reads = {read.key for read in params_reads(stage.module)}
    unread = [
        entry
        for entry in stage.params
        # the whole file: check loads and checks all of it (preflight.check_file)
        if entry != WHOLE_FILE
        and not any(
            key == entry or key.startswith(f"{entry}.") or entry.startswith(f"{key}.")
            for key in reads
        )
    ]
    assert not unread, f"stage {stage.name}: it never reads {', '.join(unread)}"


def test_the_params_walk_follows_names_properties_and_hand_offs() -> None:
    """compress reads one key of evaluate and hands its own section and clean's (to
    RowRules) on; train reads `Params.time_ordered`, a property, which reads
    split.method and data.time_column."""
    compress = params_reads("pipeline.stages.compress")
    assert Read("evaluate.primary_metric") in compress
    assert {read.key for read in compress if read.section} == {"compress", "clean"}
    train = {read.key for read in params_reads("pipeline.stages.train")}
    assert {"split.method", "data.time_column", "train", "mlflow"} <= train


# --- dvc.yaml as DVC reads it -----------------------------------------------------------


def strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def test_nothing_is_interpolated_and_landing_is_the_configured_folder() -> None:
    """Without `${...}` the file read above is the one DVC runs, and no params.yaml
    key is needed to parse it. ingest's landing dep is therefore a fixed folder: the
    one data.landing holds unless a params file says otherwise."""
    parsed = yaml.safe_load(DVC_YAML.read_text())
    assert not [text for text in strings(parsed) if "${" in text]
    landing = DataConfig.model_fields["landing"].default
    assert landing in parsed["stages"]["ingest"]["deps"]


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=root,
        env={**os.environ, **QUIET},
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, f"dvc {' '.join(args)}:\n{completed.stderr}"
    return completed


def test_dvc_yaml_parses_with_only_data_source_and_target(tmp_path: Path) -> None:
    shutil.copy(DVC_YAML, tmp_path / "dvc.yaml")
    minimal = {"data": {"source": "rows.csv", "target": "y"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(minimal))
    dvc(tmp_path, "init", "--no-scm", "-q")
    listed = dvc(tmp_path, "stage", "list", "--fail", "--name-only")
    assert listed.stdout.split() == [stage.name for stage in STAGES]


def stub_project(root: Path) -> None:
    """dvc.yaml, params.yaml and pipeline/ as in the repo, every output a placeholder
    file, and dvc.lock written for them by `dvc commit`: nothing runs."""
    shutil.copy(DVC_YAML, root / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO / PACKAGE, root / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"].values()
    deps = [dep for body in stages for dep in body.get("deps", [])]
    for body in stages:
        for entry in [*body.get("outs", []), *body.get("metrics", [])]:
            out = next(iter(entry)) if isinstance(entry, dict) else entry
            # A folder output holds the files other stages depend on (reports/tuning).
            inside = [dep for dep in deps if dep.startswith(f"{out}/")]
            if not inside and not Path(out).suffix:
                inside = [f"{out}/placeholder"]
            for path in inside or [out]:
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_text("{}\n")
    (root / "data" / "landing").mkdir(parents=True)  # ingest's one dep no stage writes
    dvc(root, "init", "--no-scm", "-q")
    dvc(root, "commit", "--force", "-q")


@pytest.fixture(scope="module")
def stubbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stubbed")
    stub_project(root)
    assert stale_stages(root) == set()
    return root


def stale_stages(root: Path) -> set[str]:
    """The stages `dvc status` says a `dvc repro` would run."""
    return set(json.loads(dvc(root, "status", "--json").stdout))


@contextmanager
def edited(path: Path, text: str) -> Iterator[None]:
    original = path.read_bytes()
    path.write_bytes(text.encode())
    try:
        yield
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize(
    ("changed", "among"),
    [
        ("pipeline/features.py", "split"),  # split builds the drift profile with it
        ("pipeline/schema.py", "validate"),  # every stage reads the schema with it
        ("pipeline/metrics.py", "compress"),  # compress scores the export with it
    ],
)
def test_dvc_status_flags_each_stage_that_runs_a_changed_file(
    stubbed: Path, changed: str, among: str
) -> None:
    """DVC's own view of the lock agrees with the walk."""
    path = stubbed / changed
    with edited(path, path.read_text() + "\n# changed\n"):
        stale = stale_stages(stubbed)
    assert among in stale
    assert stale == {stage.name for stage in STAGES if REPO / changed in closure(stage.module)}


@pytest.mark.parametrize(
    ("key", "value", "stale"),
    [
        ("split.seed", 7, {"split"}),
        # The gate's margin: compress derives the metric and reads no gate.
        ("evaluate.min_improvement", 0.5, {"evaluate"}),
        ("evaluate.primary_metric", "mae", {"evaluate", "compress"}),
    ],
)
def test_dvc_status_flags_the_stages_that_read_a_changed_param(
    stubbed: Path, key: str, value: object, stale: set[str]
) -> None:
    path = stubbed / "params.yaml"
    params = yaml.safe_load(path.read_text())
    *sections, leaf = key.split(".")
    node = params
    for section in sections:
        node = node[section]
    assert node[leaf] != value
    node[leaf] = value
    with edited(path, yaml.safe_dump(params, sort_keys=False)):
        # check reads all of params.yaml: any edit is checked against the data first
        assert stale_stages(stubbed) == {"check", *stale}


def test_dvc_parses_yaml_with_the_c_parser() -> None:
    """Every `dvc repro`, a no-op too, parses dvc.yaml, dvc.lock and params.yaml (once per
    stage that declares params). ruamel.yaml 0.19 no longer installs its C parser, and
    the pure-Python one makes a no-op repro half again as slow (bench/stages.py prints
    both): pyproject.toml depends on ruamel.yaml.clib."""
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml.clib is not installed: `make .venv/.installed`"
