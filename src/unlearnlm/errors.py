"""The one exception type for bad user input.

Every message names what was wrong and what to do about it, on one line. The command line
prints it as ``unlearnlm: error: <message>`` and exits with status 2.
"""


class UnlearnError(ValueError):
    """Bad input or settings: the message says what was wrong and how to fix it."""
