"""The one exception type for bad input: the CLI prints its one-line message without a traceback."""


class InputError(ValueError):
    """Something the user gave (a relation, a layer, a model spec, a file) is wrong; says how to fix it."""
