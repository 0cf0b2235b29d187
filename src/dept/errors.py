"""Errors a user can act on: the CLI prints them as one line and exits non-zero."""


class DeptError(Exception):
    """Base of every error that is reported to the user as a single line."""


class ConfigError(DeptError):
    """A config file or override is wrong."""


class DataError(DeptError):
    """Input data is missing, empty, undecodable or too small."""


class CheckpointError(DeptError):
    """A checkpoint is missing, corrupt or belongs to another config."""


class EngineError(DeptError):
    """An engine could not run a round or reach a site (too few answers, no node for a source, missing extra)."""


class TrainingError(DeptError):
    """Training stopped on purpose (a non-finite loss or update under `train.on_nonfinite: stop`)."""
