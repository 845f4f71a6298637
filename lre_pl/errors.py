"""The exceptions the CLI prints as their one-line message, without a traceback: bad input, and another
process of the same command that failed (its own traceback is on the console already)."""


class InputError(ValueError):
    """Something the user gave (a relation, a layer, a model spec, a file) is wrong; says how to fix it."""


class ProcessFailed(RuntimeError):
    """Another process of a multi-process run ended with an error: the command fails with its message
    (one line) and its exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
