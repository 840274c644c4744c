"""The one error type a user can cause; the CLI prints it in one line and exits 2."""


class FaithcaseError(Exception):
    """A problem with the user's input (files, config, arguments), with a message saying what to
    do."""
