"""How commands talk to the user: progress on stdout, user errors on stderr in one line."""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from pipeline.errors import DriftlineError, ValidationFailed

P = ParamSpec("P")
R = TypeVar("R")


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def report_user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn errors a user can cause into one line on stderr and a non-zero exit.

    The exit code is the error's `exit_code`: 75 for a `TransientError` (worth a
    retry: the training flow retries on it), 2 for a bad param, 1 for the rest.
    Anything else is a bug in Driftline and keeps its traceback (exit 1, not retried).
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ValidationFailed as exc:
            for line in exc.failures:
                print(line, file=sys.stderr)
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except DriftlineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("error: interrupted; earlier outputs are unchanged", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def run_command(command: Callable[..., object] | typer.Typer) -> None:
    """Run a command (a function, as `typer.run` does, or a Typer app) in a process that
    ends with it: a stage's `python -m`, the `driftline` console script.

    The process then exits without the interpreter's last full garbage collection, which
    walks every object the libraries made at import: about half a second of each stage
    process with Great Expectations, MLflow or xgboost loaded. Everything else at exit
    still happens: atexit handlers, flushed streams, joined threads.
    """
    try:
        if isinstance(command, typer.Typer):
            command()
        else:
            typer.run(command)
    finally:
        gc.freeze()
