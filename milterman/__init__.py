"""milterman: a milter that manages many milters.

The ``milterman`` library (everything under this package except the command
front-ends) is free software under the LGPL-3.0-or-later; see ``license/``.
"""

__version__ = "0.1.0"
