"""The one exception type users see.

Anything raised as ``EdgevitError`` is a problem with the user's input (a file, a field, a value) and is
printed by the CLI as one line with exit code 2. Everything else is a bug and keeps its traceback.
"""


class EdgevitError(Exception):
    """Bad input, explained: the message names the file, field or value and what was expected."""
