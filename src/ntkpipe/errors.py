"""The base of every error a user fixes by changing their input (config, data files)."""


class InputError(Exception):
    """Bad input: a wrong config value, a missing, truncated or malformed file, an impossible
    split. Jobs report it as one line instead of a traceback."""
