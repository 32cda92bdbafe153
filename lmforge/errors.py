"""The one exception type for mistakes a user can fix.

The CLI prints its message on one line and exits with status 2, without a traceback. Messages name the
file, line or key at fault and say how to fix it.
"""


class LmforgeError(Exception):
    """A user-facing error: bad input, bad config, missing file. Never a bug in lmforge."""


class Interrupted(Exception):
    """A run stopped by a signal (Ctrl-C, SIGTERM) after saving its checkpoint; the CLI exits with
    128 + the signal number, as a shell does."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
