"""The one exception type for mistakes a user can fix (bad names, files, settings)."""


class DdplugError(Exception):
    """A user-facing error: the message says what was wrong and how to fix it.

    The command line prints it on one line without a traceback and exits non-zero;
    anything else that escapes is a bug and keeps its traceback.
    """
