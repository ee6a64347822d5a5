"""Errors a user can cause. The CLI turns them into one line and exit code 2."""


class UserError(ValueError):
    """A mistake in user input: the message names the file and the key or path."""
