"""The project's own error types: every bad input ends in one of these, with a message that says what to fix."""


class MIRIError(Exception):
    """Base class of every error miri-lightning raises on purpose."""


class DataError(MIRIError, ValueError):
    """Images, masks or files that cannot be used as they are (names the file, key or tensor)."""


class ConfigError(MIRIError, ValueError):
    """A configuration value that cannot work (names the key)."""


class OutputError(MIRIError, OSError):
    """An output folder or file that cannot be written (names it; earlier outputs are left as they were)."""


class TrainingError(MIRIError, RuntimeError):
    """Training that cannot go on, such as a loss that stays NaN (says what was kept on disk)."""
