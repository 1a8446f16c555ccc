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
            name = type(self).__name__
            raise LifecycleError(
                f"with {name}(...): {name} is asynchronous: write `async with {name}(...) as ...:` inside "
                f"an `async def`{self._synchronous_alternative}"
            )

        def __exit__(self, *exc_info):
            """Never called: :meth:`__enter__` raises."""
