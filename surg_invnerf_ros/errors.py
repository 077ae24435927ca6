"""User-facing errors: one line that starts with the file, field, key or topic at fault.

`cli.py` prints them on one stderr line and exits 2; the node counts an `InputError` as a drop and
refuses to start on a `ConfigError` (STYLE §7).
"""


class InputError(ValueError):
    """A bad input file, folder or message. `reason` is a short key for drop counters."""

    def __init__(self, message: str, reason: str = "bad_input") -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(ValueError):
    """A bad configuration value; the message names the dotted key."""
