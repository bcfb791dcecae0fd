"""The one error type the CLI turns into a single clear line."""


class TokWorldError(Exception):
    """Bad input or state a user can fix; the message names the problem in one line."""
