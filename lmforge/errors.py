"""The one exception type for mistakes a user can fix.

The CLI prints its message on one line and exits with status 2, without a traceback. Messages name the
file, line or key at fault and say how to fix it.
"""


class LmforgeError(Exception):
    """A user-facing error: bad input, bad config, missing file. Never a bug in lmforge."""
