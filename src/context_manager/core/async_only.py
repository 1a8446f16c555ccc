"""A plain ``with`` on an asynchronous component, told to use ``async with``.

``with EnhancedContextManager(config) as manager:`` raised Python's ``TypeError: 'EnhancedContextManager'
object does not support the context manager protocol``, which does not say that ``async with`` is the
form to use (Python 3.11 gives no hint). The components that open with ``async with`` inherit
:class:`AsyncContextManagerOnly`, whose ``__enter__`` raises a :class:`LifecycleError` saying so.

The methods exist at run time only: to a type checker the classes still have no ``__enter__``, so it keeps
reporting ``with manager:`` before the code runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from context_manager.core.errors import LifecycleError

__all__ = ["AsyncContextManagerOnly"]


class AsyncContextManagerOnly:
    """Mixin: ``with component:`` raises a :class:`LifecycleError` naming ``async with``."""

    __slots__ = ()

    _synchronous_alternative: ClassVar[str] = ""
    """What synchronous code uses instead, appended to the message (``"; in synchronous code, ..."``)."""

    if not TYPE_CHECKING:

        def __enter__(self):
            """Raise :class:`LifecycleError`: this component opens with ``async with``."""
            name = type(self).__name__
            raise LifecycleError(
                f"with {name}(...): {name} is asynchronous: write `async with {name}(...) as ...:` inside "
                f"an `async def`{self._synchronous_alternative}"
            )

        __exit__ = None
        """None, not a method: ``with`` needs an ``__exit__`` to reach :meth:`__enter__`, and a None one keeps
        ``isinstance(component, contextlib.AbstractContextManager)`` false (code choosing between
        ``enter_context`` and ``enter_async_context`` by asking takes the asynchronous path)."""

        def __init_subclass__(cls, **options):
            """A subclass that also inherits a synchronous context manager keeps it.

            In ``class Mine(EnhancedContextManager, Blocking)`` this mixin comes before ``Blocking`` in the
            MRO: its ``__enter__`` and ``__exit__`` would hide the ones the subclass chose.
            """
            super().__init_subclass__(**options)
            mro = cls.__mro__
            later = mro[mro.index(AsyncContextManagerOnly) + 1 :]
            for method in ("__enter__", "__exit__"):
                owner = next(base for base in mro if method in vars(base))
                chosen = next((vars(base)[method] for base in later if method in vars(base)), None)
                if owner is AsyncContextManagerOnly and chosen is not None:
                    setattr(cls, method, chosen)
