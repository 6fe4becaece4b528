"""ConfigError: a setting that cannot be used; the message names the key and what to do instead.

Its own module, below everything else in ``engine/``, so that the objectives, the data pipeline
and the pre-trained weight readers raise it without importing the configuration schema, and the
schema (engine/config.py) can read the objective registry (engine/objectives.py) with no import
cycle. ``engine.config.ConfigError`` is the same class.
"""


class ConfigError(ValueError):
    pass
