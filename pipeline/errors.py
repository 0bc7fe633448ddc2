"""Errors a user can cause. The CLI prints them in one line and exits non-zero."""


class DriftlineError(Exception):
    """Something the user can fix: the message says what."""

    exit_code = 1


class ConfigError(DriftlineError):
    """params.yaml is missing, unreadable or holds a bad value."""

    exit_code = 2


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
