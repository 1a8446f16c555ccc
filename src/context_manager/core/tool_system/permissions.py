"""Who may run which tool: :class:`PermissionPolicy` and the approval callback type.

The policy sorts every call into one of three outcomes (:class:`PermissionDecision`):

* ``ALLOW`` - the tool's permission is at or below ``allow_up_to`` (default ``ToolPermission.STANDARD``,
  so ``PUBLIC`` and ``STANDARD`` tools run freely), or the tool is listed in ``always_allow``;
* ``ASK`` - the tool's permission is above ``allow_up_to``: the call runs only if the manager's approval
  callback returns ``True`` for it (human in the loop); without a callback it is denied;
* ``DENY`` - the tool is listed in ``always_deny``: no callback can allow it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from context_manager.core.errors import InvalidArgumentError
from context_manager.core.tool_system.definition import ToolPermission

if TYPE_CHECKING:
    from context_manager.core.tool_system.definition import ToolDefinition

__all__ = ["ApprovalCallback", "PermissionDecision", "PermissionPolicy"]

ApprovalCallback = Callable[["ToolDefinition", dict[str, Any]], Awaitable[bool] | bool]
"""``async (definition, arguments) -> bool``: return ``True`` to let one call above the policy run.

A sync callable returning a bool is accepted too: it is called in one of the tool manager's threads (a
prompt or a blocking request does not hold the event loop), about one call at a time. Anything but
``True`` (including an exception) denies.
"""


class PermissionDecision(StrEnum):
    """What the policy says about one call."""

    ALLOW = "allow"
    """Run without asking."""
    ASK = "ask"
    """Run only if the approval callback approves."""
    DENY = "deny"
    """Never run."""


@dataclass(frozen=True, slots=True)
class PermissionPolicy:
    """Which tools run freely, which need approval and which never run.

    Example:
        >>> policy = PermissionPolicy(allow_up_to=ToolPermission.RESTRICTED, always_deny=frozenset({"rm"}))

    Raises:
        InvalidArgumentError: ``allow_up_to`` is not a ToolPermission (or its string) or a tool set is not a
            set of names.
    """

    allow_up_to: ToolPermission = ToolPermission.STANDARD
    """The highest permission level that runs without approval (default ``STANDARD``)."""
    always_allow: frozenset[str] = field(default_factory=frozenset)
    """Tool names that run without approval whatever their permission."""
    always_deny: frozenset[str] = field(default_factory=frozenset)
    """Tool names that never run (checked first; an approval callback cannot override it)."""

    def __post_init__(self) -> None:
        level = self.allow_up_to
        if not isinstance(level, ToolPermission):
            try:
                level = ToolPermission(str(level).strip().lower())
            except ValueError:
                raise InvalidArgumentError(
                    "allow_up_to",
                    self.allow_up_to,
                    "one of " + ", ".join(repr(p.value) for p in ToolPermission),
                ) from None
            object.__setattr__(self, "allow_up_to", level)
        for name in ("always_allow", "always_deny"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise InvalidArgumentError(name, value, "a set of tool names")
            # read once: a generator checked and then read again would be empty (a deny list lost)
            names = frozenset(value) if isinstance(value, frozenset) else tuple(value)
            if not all(isinstance(item, str) for item in names):
                raise InvalidArgumentError(name, value, "a set of tool names")
            object.__setattr__(self, name, frozenset(names))

    @classmethod
    def coerce(cls, value: PermissionPolicy | ToolPermission | str) -> PermissionPolicy:
        """Return ``value`` as a policy (a ToolPermission or its string means ``allow_up_to``)."""
        if isinstance(value, PermissionPolicy):
            return value
        return cls(allow_up_to=value)  # type: ignore[arg-type]  # validated in __post_init__

    def decide(self, definition: ToolDefinition) -> PermissionDecision:
        """Return whether a call of ``definition`` runs, needs approval or is denied."""
        if definition.name in self.always_deny:
            return PermissionDecision.DENY
        if definition.name in self.always_allow or definition.permission.level <= self.allow_up_to.level:
            return PermissionDecision.ALLOW
        return PermissionDecision.ASK
