"""The base of errors about a user's inputs or machine: the command line shows them as one line, not a traceback."""


class UserError(Exception):
    """Raised for what the user can fix (a missing file, an unloadable model); the message says what to do."""
