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


def one_line(e: BaseException, typed: bool = False) -> str:
    """The line of an exception a user reads (with its type name when `typed`): the first line of
    its message, or the last one when the message carries a traceback or its frames (Ray's task
    errors end with the exception the task raised); the type name when the message is empty."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    # Python's header, or (Ray's task errors) frames without it: `File "...", line N, in f`.
    carries_traceback = any(line.startswith(("Traceback (most recent call last)", 'File "')) for line in lines)
    line = lines[-1] if carries_traceback else lines[0]
    return f"{type(e).__name__}: {line}" if typed else line
