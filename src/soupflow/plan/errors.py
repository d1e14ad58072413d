"""The error every invalid configuration raises, before any job starts."""


class ConfigError(ValueError):
    """An invalid configuration; the message is one line naming the key and what is allowed."""
