"""The ensemble family: several families combined on their out-of-fold predictions.

`train.ensemble.members` names at least two families (xgboost, sklearn, torch); each
takes its params from its own section. Fitting an ensemble:

1. Each member is fitted on train, early-stopping on val as it would be alone; the step
   (round or epoch) it keeps is its step count from then on.
2. Out-of-fold (OOF) predictions on the train rows: with `order: time`, expanding-window
   folds (fold j fits on the rows before block j and scores block j; block 0 is never
   scored), otherwise seeded shuffled k-fold (stratified for classes). In each fold every
   member is fitted afresh for its kept step count, with no validation rows at all, so
   no member is fitted or early-stopped on a row it scores. On large tables a fold fits
   on at most `train.selection_rows` rows, as the fits that score any other choice do
   (the newest before its block, or a seeded sample).
3. The combiner is fitted on the OOF predictions: `blend` finds non-negative weights
   summing to 1 that minimise the OOF loss (RMSE, or log loss of the mixed
   probabilities), and keeps a single member's weight 1 when that is no worse; `stack`
   fits a ridge regression on the member predictions (regression) or a logistic
   regression on the member log-probabilities (classes: the log-odds for binary).

Classes stay probabilities, so `TabularModel`'s calibrator and threshold apply as for
any family. The refit on train + val (`refit_model`) fits each member for its own kept
steps and keeps the combiner: `refit_plan()` hands both to the fresh learner through
its config (see `EnsembleLearner.fit`). The folder holds `ensemble.json` (members,
steps, combiner, OOF losses) and `members/<family>/` with each member's own files; no
pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Task
from pipeline.errors import DataError
from pipeline.features import FeatureArrays, FeatureSpec
from pipeline.models.base import FitReport, Learner, StepCallback, TrainingData, validation_loss

ENSEMBLE_FILE = "ensemble.json"
MEMBERS_FOLDER = "members"
# A fold must score (and a time-ordered fold fit on) at least this many rows.
MIN_FOLD_ROWS = 20
# The stack clips probabilities here before logs, in the combiner and its ONNX graph
# alike: well above float32 noise, since a forest's ONNX graph gives ~1e-6 where the
# native model gives an exact 0 (clipped at 1e-7 the two differed by 3e-3 on ELEC2).
EPSILON = 1e-4
# The keys `fit_model` sets from `train.objective`; every member receives them.
SHARED_KEYS = ("loss", "tweedie_power")


@dataclass(frozen=True)
class Combiner:
    """How member outputs become one: blend weights, or a stack's linear map.

    stack: `coef` is (inputs, outputs), `intercept` (outputs,). The inputs are the member
    predictions (regression), each member's log-odds (binary: one output, a sigmoid), or
    each member's k log-probabilities (multiclass: k outputs, a softmax)."""

    method: str
    task: str
    weights: list[float] | None = None
    coef: list[list[float]] | None = None
    intercept: list[float] | None = None

    def combine(self, outputs: list[np.ndarray]) -> np.ndarray:
        if self.method == "blend":
            assert self.weights is not None
            return sum(w * out for w, out in zip(self.weights, outputs, strict=True))
        assert self.coef is not None and self.intercept is not None
        z = stack_inputs(self.task, outputs) @ np.asarray(self.coef) + np.asarray(self.intercept)
        if self.task == "regression":
            return z[:, 0]
        if self.task == "binary":
            positive = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.column_stack([1.0 - positive, positive])
        z = z - z.max(axis=1, keepdims=True)
        exp = np.exp(z)
        return exp / exp.sum(axis=1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Combiner:
        return cls(
            raw["method"], raw["task"], raw.get("weights"), raw.get("coef"), raw.get("intercept")
        )


def stack_inputs(task: str, outputs: list[np.ndarray]) -> np.ndarray:
    """The stack's inputs: predictions, log-odds (binary) or log-probabilities."""
    if task == "regression":
        return np.column_stack(outputs)
    logs = [np.log(np.clip(out, EPSILON, 1.0)) for out in outputs]
    if task == "binary":
        return np.column_stack([log[:, 1] - log[:, 0] for log in logs])
    return np.concatenate(logs, axis=1)


def combiner_loss(task: str, y: np.ndarray, combined: np.ndarray) -> float:
    """The loss the combiner minimises: `validation_loss` (RMSE, or log loss)."""
    return validation_loss(task, y, combined)


def fit_blend(task: str, outputs: list[np.ndarray], y: np.ndarray) -> Combiner:
    """Non-negative weights summing to 1 with the lowest OOF loss (SLSQP from equal
    weights); a single member (weight 1) wins when it scores no worse."""
    from scipy.optimize import minimize

    count = len(outputs)

    def loss(weights: np.ndarray) -> float:
        mixed = sum(w * out for w, out in zip(weights, outputs, strict=True))
        if task == "regression":
            return float(np.mean((y - mixed) ** 2))  # RMSE's minimiser, smooth
        return combiner_loss(task, y, mixed)

    found = minimize(
        loss,
        np.full(count, 1.0 / count),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * count,
        constraints=[{"type": "eq", "fun": lambda w: float(np.sum(w) - 1.0)}],
        options={"maxiter": 200, "ftol": 1e-12},
    )
    weights = np.clip(np.asarray(found.x, dtype=np.float64), 0.0, None)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(count, 1.0 / count)
    candidates = [weights] + [np.eye(count)[index] for index in range(count)]
    best = min(candidates, key=loss)
    return Combiner("blend", task, weights=[float(w) for w in best])


def fit_stack(
    task: str, outputs: list[np.ndarray], y: np.ndarray, alpha: float, n_classes: int
) -> Combiner:
    """Ridge on the predictions (regression), or a logistic regression with L2 strength
    `alpha` (C = 1/alpha) on the log-odds / log-probabilities (classes)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    inputs = stack_inputs(task, outputs)
    if task == "regression":
        ridge = Ridge(alpha=alpha).fit(inputs, y)
        coef = np.asarray(ridge.coef_, dtype=np.float64).reshape(-1, 1)
        return Combiner("stack", task, coef=coef.tolist(), intercept=[float(ridge.intercept_)])
    codes = np.asarray(y, dtype=np.int64)
    if len(np.unique(codes)) < n_classes:
        raise DataError(
            "the out-of-fold rows lack a class, so the stack cannot learn it: use "
            "train.ensemble.method: blend or fewer train.ensemble.folds"
        )
    logistic = LogisticRegression(C=1.0 / alpha, max_iter=2000).fit(inputs, codes)
    coef = np.asarray(logistic.coef_, dtype=np.float64).T  # (inputs, 1 or k)
    intercept = np.asarray(logistic.intercept_, dtype=np.float64)
    return Combiner("stack", task, coef=coef.tolist(), intercept=intercept.tolist())


@dataclass(frozen=True)
class OofFold:
    """Row positions in train: a member fits on `fit` and is scored on `score`."""

    fit: np.ndarray
    score: np.ndarray


def oof_folds(
    y: np.ndarray, task: str, folds: int, order: str, seed: int, max_rows: int | None = None
) -> list[OofFold]:
    """Expanding-window folds in row order (`order: time`), else shuffled k-fold,
    stratified for classes, seeded. A fold fits on at most `max_rows` rows
    (`train.selection_rows`): the newest before its block, or a seeded sample."""
    found = _oof_folds(y, task, folds, order, seed)
    if max_rows is None:
        return found
    rng = np.random.default_rng(seed)
    capped = []
    for fold in found:
        fit = fold.fit
        if len(fit) > max_rows:
            if order == "time":
                fit = fit[-max_rows:]
            else:
                fit = np.sort(rng.choice(fit, size=max_rows, replace=False))
        capped.append(OofFold(fit, fold.score))
    return capped


def _oof_folds(y: np.ndarray, task: str, folds: int, order: str, seed: int) -> list[OofFold]:
    n_rows = len(y)
    if order == "time":
        block = n_rows // (folds + 1)
        if block < MIN_FOLD_ROWS:
            raise DataError(
                f"train.ensemble.folds: {folds} time-ordered folds of {n_rows} train rows "
                f"leave blocks of {block} rows (at least {MIN_FOLD_ROWS}): use fewer folds"
            )
        found = []
        for j in range(1, folds + 1):
            stop = n_rows if j == folds else (j + 1) * block
            found.append(OofFold(np.arange(0, j * block), np.arange(j * block, stop)))
        return found
    if n_rows // folds < MIN_FOLD_ROWS:
        raise DataError(
            f"train.ensemble.folds: {folds} folds of {n_rows} train rows leave fewer than "
            f"{MIN_FOLD_ROWS} rows a fold: use fewer folds"
        )
    from sklearn.model_selection import KFold, StratifiedKFold

    if task == "regression":
        splits = KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n_rows))
    else:
        codes = np.asarray(y, dtype=np.int64)
        if np.bincount(codes).min() < folds:
            splits = KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n_rows))
        else:
            stratified = StratifiedKFold(folds, shuffle=True, random_state=seed)
            splits = stratified.split(np.zeros(n_rows), codes)
    return [OofFold(np.sort(fit), np.sort(score)) for fit, score in splits]


class EnsembleLearner(Learner):
    """Members fitted as alone, combined by a combiner fitted on OOF predictions.

    `config` is the ensemble's params: `members`, `method`, `folds`, `order`,
    `stack_alpha`, each member's section under its name, and the objective's `loss`
    keys. `device` is `train.device` as requested; each member resolves its own."""

    family = "ensemble"

    members: dict[str, Learner]
    combiner: Combiner
    # Per member: the steps kept, its val loss and OOF loss; the ensemble's OOF loss.
    summary: dict[str, Any]

    @property
    def member_names(self) -> list[str]:
        return list(self.config["members"])

    def member_config(self, family: str) -> dict[str, Any]:
        """A member's params: its own section plus the objective's shared keys."""
        config = dict(self.config[family])
        config.update({key: self.config[key] for key in SHARED_KEYS if key in self.config})
        return config

    def _new_member(self, family: str) -> Learner:
        from pipeline.models import learner_class, resolve_device

        device = resolve_device(self.device, family)  # type: ignore[arg-type]
        return learner_class(family)(  # type: ignore[arg-type]
            self.member_config(family),
            self.features,
            self.task,
            self.n_classes,
            device=device,
            seed=self.seed,
        )

    def fit(
        self, data: TrainingData, on_step: StepCallback | None = None, steps: int | None = None
    ) -> FitReport:
        """Fit members, OOF predictions, then the combiner; report the val loss.

        Given `steps` (the refit on train + val), the count is ignored: every member is
        fitted for its own kept steps and the combiner is reused, both read from
        `config["refit"]` (`refit_plan()` of the early-stopped learner, which
        `refit_model` passes in). Carrying the plan in the config keeps `Learner.fit`'s
        signature, and `model.params` stays the params the user gave.
        """
        if steps is not None:
            plan = self.config.get("refit")
            if plan is None:
                raise ValueError("an ensemble refit needs config['refit'] (refit_plan())")
            self.members = {}
            for family in self.member_names:
                member = self._new_member(family)
                member.fit(data, steps=int(plan["steps"][family]))
                self.members[family] = member
            self.combiner = Combiner.from_dict(plan["combiner"])
            self.summary = plan["summary"]
            return FitReport(best_step=0, val_loss=math.nan, device=self._device_used())

        self.members, reports = {}, {}
        for family in self.member_names:
            member = self._new_member(family)
            reports[family] = member.fit(data)
            self.members[family] = member
        kept = {family: reports[family].best_step + 1 for family in self.member_names}
        folds = oof_folds(
            data.y_train,
            self.task,
            int(self.config["folds"]),
            self.config.get("order", "shuffled"),
            self.seed,
            self.config.get("selection_rows"),
        )
        scored = np.concatenate([fold.score for fold in folds])
        oof = {family: self._oof(family, data, folds, kept[family]) for family in kept}
        outputs = [oof[family] for family in self.member_names]
        y_oof = data.y_train[scored]
        if self.config["method"] == "stack":
            self.combiner = fit_stack(
                self.task, outputs, y_oof, float(self.config["stack_alpha"]), self.n_classes
            )
        else:
            self.combiner = fit_blend(self.task, outputs, y_oof)
        val_loss = validation_loss(self.task, data.y_val, self.predict_raw(data.x_val))
        self.summary = {
            "method": self.combiner.method,
            "order": self.config.get("order", "shuffled"),
            "folds": len(folds),
            "oof_rows": len(scored),
            "fold_fit_rows": max(len(fold.fit) for fold in folds),
            "steps": kept,
            "member_val_loss": {f: round(reports[f].val_loss, 6) for f in self.member_names},
            "oof_loss": {
                **{f: round(combiner_loss(self.task, y_oof, oof[f]), 6) for f in oof},
                "ensemble": round(
                    combiner_loss(self.task, y_oof, self.combiner.combine(outputs)), 6
                ),
            },
            "val_loss": round(val_loss, 6),
        }
        if on_step is not None:
            on_step(0, val_loss)
        return FitReport(0, val_loss, [val_loss], device=self._device_used())

    def _oof(self, family: str, data: TrainingData, folds: list[OofFold], steps: int) -> np.ndarray:
        """The member's predictions for each fold's scored rows, fitted on the fold's fit
        rows alone for `steps` (no validation rows: nothing to early-stop on)."""
        parts = []
        for fold in folds:
            fit_rows = data.x_train.iloc[fold.fit]
            fold_data = TrainingData(
                data.features,
                data.task,
                data.n_classes,
                fit_rows,
                data.y_train[fold.fit],
                fit_rows.iloc[:0],
                data.y_train[:0],
                class_weights=data.class_weights,
            )
            member = self._new_member(family)
            member.fit(fold_data, steps=steps)
            parts.append(
                self._full_width(member, member.predict_raw(data.x_train.iloc[fold.score]))
            )
        return np.concatenate(parts)

    def _full_width(self, member: Learner, raw: np.ndarray) -> np.ndarray:
        """Probabilities over every class, when a fold's rows lacked one (scikit-learn
        then predicts only the classes it saw)."""
        if self.task == "regression" or raw.shape[1] == self.n_classes:
            return raw
        seen = np.asarray(member.pipeline.classes_, dtype=np.int64)  # type: ignore[attr-defined]
        full = np.zeros((len(raw), self.n_classes))
        full[:, seen] = raw
        return full

    def _device_used(self) -> str:
        used = {member.device for member in self.members.values()}
        return "cuda" if "cuda" in used else "cpu"

    def refit_plan(self) -> dict[str, Any]:
        """What the refit on train + val keeps: each member's steps and the combiner."""
        return {
            "steps": dict(self.summary["steps"]),
            "combiner": self.combiner.to_dict(),
            "summary": self.summary,
        }

    def predict_raw(self, prepared: pd.DataFrame) -> np.ndarray:
        outputs = [self.members[f].predict_raw(prepared) for f in self.member_names]
        return self.combiner.combine(outputs)

    def predict_arrays(self, arrays: FeatureArrays) -> np.ndarray:
        outputs = [self.members[f].predict_arrays(arrays) for f in self.member_names]
        return self.combiner.combine(outputs)

    def save(self, directory: Path) -> None:
        for family, member in self.members.items():
            folder = Path(directory) / MEMBERS_FOLDER / family
            folder.mkdir(parents=True)
            member.save(folder)
        state = {
            "members": self.member_names,
            "combiner": self.combiner.to_dict(),
            "summary": self.summary,
        }
        (Path(directory) / ENSEMBLE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(
        cls,
        directory: Path,
        config: dict[str, Any],
        features: FeatureSpec,
        task: Task,
        n_classes: int,
    ) -> EnsembleLearner:
        from pipeline.models import learner_class

        path = Path(directory) / ENSEMBLE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            combiner = Combiner.from_dict(state["combiner"])
            names = list(state["members"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a readable ensemble file ({exc}): retrain") from None
        if names != list(config["members"]):
            raise DataError(f"{path}: its members {names} are not the model's: retrain")
        learner = cls(config, features, task, n_classes, device="cpu")
        learner.members = {
            family: learner_class(family).load(  # type: ignore[arg-type]
                Path(directory) / MEMBERS_FOLDER / family,
                learner.member_config(family),
                features,
                task,
                n_classes,
            )
            for family in names
        }
        learner.combiner = combiner
        learner.summary = state.get("summary", {})
        return learner
