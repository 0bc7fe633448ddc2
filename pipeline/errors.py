"""Errors a user can cause. The CLI prints them in one line and exits non-zero.

The exit code tells an orchestrator what to do next: 75 (`EX_TEMPFAIL`, a
`TransientError`) means "try again later, nothing is wrong with the data or the code";
any other non-zero code (1, or 2 for a bad param) means a retry would fail the same
way. The training flow retries a stage only on 75.
"""


class DriftlineError(Exception):
    """Something the user can fix: the message says what."""

    exit_code = 1


class ConfigError(DriftlineError):
    """params.yaml is missing, unreadable or holds a bad value."""

    exit_code = 2


class TransientError(DriftlineError):
    """A failure that may pass on its own: I/O that timed out, a server briefly down.

    Raise it (or a subclass) only where a retry can succeed with nothing changed; its
    exit code, 75, is the signal the training flow retries on.
    """

    exit_code = 75


class SourceError(DriftlineError):
    """The data source cannot be read: a missing path, a bad file, a database that is down."""


class DataError(DriftlineError):
    """The data was read but cannot be used as it is."""


class ValidationFailed(DriftlineError):
    """Critical data expectations failed; `failures` holds one line per expectation."""

    def __init__(self, failures: list[str], report_dir: str) -> None:
        self.failures = failures
        self.report_dir = report_dir
        super().__init__(f"{len(failures)} critical expectation(s) failed; report in {report_dir}")


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (a driver's error can run to
    pages), or its type's name when it has none. Mask secrets in it before showing it
    (`pipeline.secrets.redact`)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
