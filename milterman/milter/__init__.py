"""Write a milter in Python: subclass :class:`Milter`, implement the stages you need, return a reply.

Serve it with ``milter-run module:Class -s SPEC``, run it inside milter-manager with
``[[milter]] python = "module:Class"``, and test it with :mod:`milterman.testing`.
The guide is ``doc/writing-milters.md``.
"""

from .api import (ACCEPT, CONTINUE, DISCARD, REJECT, SKIP, TEMPFAIL, Connection, Milter, MilterDefinitionError,
                  MilterUsageError, check_milter_class, reply)

__all__ = ["Milter", "Connection", "CONTINUE", "ACCEPT", "REJECT", "TEMPFAIL", "DISCARD", "SKIP", "reply",
           "MilterDefinitionError", "MilterUsageError", "check_milter_class", "load"]


def load(reference: str, fresh: bool = False) -> type[Milter]:
    """``"package.module:Class"`` → the checked class; :class:`MilterDefinitionError` says what is wrong.

    ``fresh``: import the module again if it was imported before (a reload sees edited code).
    """
    import importlib

    module_name, colon, attribute = reference.partition(":")
    if not colon or not module_name or not attribute:
        raise MilterDefinitionError(f"<{reference}> is not MODULE:CLASS")
    try:
        module = importlib.import_module(module_name)
        if fresh:
            module = importlib.reload(module)
    except MilterDefinitionError:
        raise
    except Exception as error:  # whatever the site's module raises while importing is its problem
        raise MilterDefinitionError(f"cannot import module <{module_name}>: {type(error).__name__}: {error}") from None
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise MilterDefinitionError(f"module <{module_name}> has no <{attribute}>") from None
    return check_milter_class(target)
