"""The one error type a user can cause and fix."""


class CompressError(Exception):
    """A problem with the user's input or environment.

    The message says what went wrong and what to do about it; the CLI prints it on one line
    and exits with status 2, without a traceback.
    """
