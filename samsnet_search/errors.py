"""Named exceptions. The CLI turns each into one clear line and exit code 2."""


class SamsNetError(Exception):
    """Base class: a user-facing problem (bad input, bad config, bad data)."""


class ConfigError(SamsNetError):
    """A configuration or study file is invalid. The message names the file and key path."""


class DataError(SamsNetError):
    """Audio data is missing or malformed. The message names the file and the problem."""


class CheckpointError(SamsNetError):
    """A checkpoint cannot be read or does not match the model."""


class DamagedFile(ConfigError):
    """A file the platform wrote is unreadable now: binary garbage, wrong field types, cut short.
    The message names the file, what is wrong and what a valid one holds."""
