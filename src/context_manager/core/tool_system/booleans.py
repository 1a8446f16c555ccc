"""A JSON boolean is no number: where a typed tool's schema takes an integer or a number, ``true`` is refused.

Pydantic's lax mode reads ``true`` as 1 and ``false`` as 0 for an ``int`` or ``float`` (a bool is an int
in Python), though the schema the model was given says integer or number, and JSON Schema (the library's
own check of a parameters dict) refuses a boolean there. The manager therefore looks, before pydantic
validates a typed tool's call, for booleans where the tool's schema takes a number and no boolean:

* :func:`numeric_arguments` - the tool's own arguments (``limit: int``, an ``IntEnum``, ``float | str``);
* :func:`nested_numeric_arguments` and :func:`nested_booleans` - inside them, at any depth: a nested
  model's, dataclass's or ``TypedDict``'s fields, a list's items, a dict's values, a tuple's members
  (``{"filter": {"min_age": true}}``, ``{"ids": [1, true]}``).

Both read the JSON schema the tool was registered with (the one the model sees), so they say what that
schema says. Where a value may be checked against several schemas (a union), a boolean is refused only when
none of them takes it and one of them takes a number (an object's ``Literal`` tag, a discriminator, leaves
out the members that do not have it); a position whose schema is unknown (``Any``, an open object's other
keys) takes it. Where the members differ (one takes a number, another a boolean or anything: ``A | B``
without a tag), or the key is none the object lists (a field given by its name under ``populate_by_name``,
or by a later ``AliasChoices`` choice; and anywhere inside a value given under such a key), the boolean is
*unsure*: once pydantic has validated the call, :func:`booleans_read_as_numbers` looks at what it made of
it, and a number there is refused (a value under such a key is one entry, followed only if pydantic took
it: an extra key it ignores costs nothing however large). The walk is iterative (no depth limit), walks a
value once per set of schemas (shared values, cycles), and never where no schema takes a number.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import itertools
import operator
from collections.abc import Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel

from context_manager.core.tool_system.schema import REDACTED, describe_argument

__all__ = ["booleans_read_as_numbers", "nested_booleans", "nested_numeric_arguments", "numeric_arguments"]

_NUMBER_TYPES = frozenset({"integer", "number"})
_TYPE_WORDS = {
    "integer": "a valid integer",
    "number": "a valid number",
    "string": "a valid string",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
_PLAIN_NUMBER_WORDS = frozenset({"a valid integer", "a valid number", "null"})
_MAX_DEPTH = 64  # levels :func:`_holds_booleans` scans (deeper: the walk, which has no limit, decides)
_UNKNOWN: dict[str, Any] = {}  # the schema of a position nothing is known about: it takes anything
_UNLISTED: dict[str, Any] = {}  # ... of an object's key its properties do not list (a field by its name?)
_INSIDE = "\x00inside"  # an ``unsure`` entry: the booleans inside this value, if pydantic took it (by name)
_SCALARS = frozenset({str, int, float, type(None)})  # (bool left out: a container of these holds none)
_CONTAINERS = frozenset({dict, list, tuple})
_DICT = itertools.repeat(dict)
_ABSENT: Any = object()  # (an object's value at a key it does not have)
_SCANNED = 16  # an object or array of this many members is scanned for booleans before it is walked


def numeric_arguments(schema: Mapping[str, Any]) -> dict[str, str]:
    """A typed tool's arguments pydantic's lax mode would read ``true`` into as 1 (name -> what is expected).

    Their schema takes an integer or a number (an ``IntEnum``'s values behind a ``$ref``, a union's
    member), and no boolean.
    """
    properties = schema.get("properties") or {}
    definitions = schema.get("$defs") or {}
    numeric: dict[str, str] = {}
    for name, property_schema in properties.items():
        types = _schema_types(property_schema, definitions)
        if not types or not types & _NUMBER_TYPES or "boolean" in types:
            continue
        numeric[name] = _expected([property_schema], definitions)
    return numeric


def nested_numeric_arguments(schema: Mapping[str, Any]) -> tuple[str, ...]:
    """The arguments of a typed tool inside whose values (objects, arrays) a schema takes a number (in order).

    Only these are walked by :func:`nested_booleans`: a call of a tool without such arguments costs nothing.
    """
    properties = schema.get("properties") or {}
    definitions = schema.get("$defs") or {}
    return tuple(
        name
        for name, property_schema in properties.items()
        if _holds_numbers(property_schema, definitions, nested=False, seen=set())
    )


def nested_booleans(
    arguments: Mapping[str, Any],
    names: collections.abc.Iterable[str],
    schema: Mapping[str, Any],
    *,
    sensitive_arguments: collections.abc.Iterable[str] = (),
) -> tuple[dict[tuple[int | str, ...], str], dict[tuple[int | str, ...], str]]:
    """The booleans inside the ``names`` arguments where ``schema`` takes a number: path -> problem text.

    A problem reads as pydantic's do in the tool's error (``filter.min_age: got true; expected a valid
    integer``); under one of ``sensitive_arguments`` the value is ``[REDACTED]``. Second: the booleans
    that are problems only if pydantic reads them as numbers (path -> what is expected, "" when unknown),
    for :func:`booleans_read_as_numbers` once the call is validated.
    """
    properties = schema.get("properties") or {}
    definitions = schema.get("$defs") or {}
    walker: _Walker | None = None
    for name in names:
        value = arguments.get(name)
        if (
            isinstance(value, dict | list | tuple)
            and name in properties
            and not _plain(value.values() if isinstance(value, dict) else value)  # (most calls: no walk)
        ):
            walker = walker or _Walker(definitions)
            walker.walk(value, _spread(properties[name], definitions), (name,))
    if walker is None or not (walker.found or walker.unsure):
        return {}, {}
    sensitive = frozenset(sensitive_arguments)
    problems: dict[tuple[int | str, ...], str] = {}
    for path, expected in walker.found.items():
        problems[path] = _problem(arguments, path, expected, sensitive)
    return problems, walker.unsure


def booleans_read_as_numbers(
    validated: Any,
    unsure: Mapping[tuple[int | str, ...], str],
    arguments: Mapping[str, Any],
    *,
    sensitive_arguments: collections.abc.Iterable[str] = (),
) -> dict[tuple[int | str, ...], str]:
    """The ``unsure`` booleans pydantic read as numbers (``validated``: the arguments model): path -> problem.

    At each path, the validated value is followed (a model's field by alias or name, a dataclass's field,
    a dict's key, a list's index); a number there (not a bool) is a ``true`` read as 1. A path not followed
    (a field pydantic ignored, a set) is no problem.
    """
    sensitive = frozenset(sensitive_arguments)
    problems: dict[tuple[int | str, ...], str] = {}
    for path, expected in unsure.items():
        value = validated
        for part in path:
            value = _validated_member(value, part)
            if value is _ABSENT:
                break
        if expected == _INSIDE:
            # a value under a key the schema does not list: an extra pydantic ignored is not followed
            # (nothing more to do, however large); a field given by its name is looked at boolean by boolean
            given = _value_at(arguments, path)
            if value is _ABSENT or value is given:  # (an open model's extra, kept as it was given)
                continue
            for inner_path in _boolean_paths(given):
                inner = value
                for part in inner_path:
                    inner = _validated_member(inner, part)
                    if inner is _ABSENT:
                        break
                read = _read_as_number(inner, "")
                if read is not None:
                    at = (*path, *inner_path)
                    problems[at] = _problem(arguments, at, read, sensitive)
            continue
        read = _read_as_number(value, expected)
        if read is not None:
            problems[path] = _problem(arguments, path, read, sensitive)
    return problems


def _read_as_number(value: Any, expected: str) -> str | None:
    """What was expected where a boolean was given and pydantic made ``value`` of it; None if no number."""
    if type(value) is bool or not isinstance(value, int | float):
        return None
    if expected:
        return expected
    if isinstance(value, enum.Enum):
        return " or ".join(describe_argument(member.value) for member in type(value))
    return "a valid number" if isinstance(value, float) else "a valid integer"


def _boolean_paths(value: Any) -> list[tuple[int | str, ...]]:
    """The paths of the booleans inside ``value`` (its objects and arrays), in order.

    A value shared, or holding itself, is followed once.
    """
    paths: list[tuple[int | str, ...]] = []
    seen: set[int] = set()
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(value, ())]
    while stack:
        value, path = stack.pop()
        if type(value) is bool:
            paths.append(path)
            continue
        if not isinstance(value, dict | list | tuple) or id(value) in seen:
            continue
        seen.add(id(value))
        members = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend(reversed([(item, (*path, key)) for key, item in members]))
    return paths


def _validated_member(value: Any, key: int | str) -> Any:
    """The member ``key`` (as the model sent it) of a validated value, or ``_ABSENT``."""
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        by_name = bool(
            value.model_config.get("populate_by_name") or value.model_config.get("validate_by_name")
        )
        for name, info in fields.items():
            if key in (info.alias, info.validation_alias) or (
                key == name and (by_name or info.alias is None)
            ):
                return getattr(value, name, _ABSENT)
            if isinstance(info.validation_alias, AliasChoices) and key in info.validation_alias.choices:
                # one of the names the field is taken by (the schema lists the first); an ``AliasPath``
                # choice is no ``str``, so never equal
                return getattr(value, name, _ABSENT)
        extra = value.__pydantic_extra__
        return extra.get(key, _ABSENT) if isinstance(extra, dict) and isinstance(key, str) else _ABSENT
    if isinstance(value, Mapping):
        try:
            return value.get(key, _ABSENT)
        except TypeError:
            return _ABSENT
    if isinstance(value, list | tuple):
        return value[key] if isinstance(key, int) and 0 <= key < len(value) else _ABSENT
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and isinstance(key, str):
        return getattr(value, key, _ABSENT)
    return _ABSENT


def _problem(
    arguments: Mapping[str, Any], path: tuple[int | str, ...], expected: str, sensitive: frozenset[str]
) -> str:
    given = REDACTED if path[0] in sensitive else describe_argument(_value_at(arguments, path))
    return f"{'.'.join(str(part) for part in path)}: got {given}; expected {expected}"


def _value_at(arguments: Mapping[str, Any], path: tuple[int | str, ...]) -> Any:
    value: Any = arguments
    for part in path:
        value = value[part]
    return value


def _holds_booleans(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> bool:
    """Whether a boolean may be inside ``value``: False when none is in its objects and arrays at any depth.

    Level by level, at C speed: a large value without a boolean inside (most) is not walked schema by
    schema, item by item. True (the walk decides) also for what this does not follow: a subclass of dict,
    list or tuple, a value shared or holding itself, more levels than the walk goes down.
    """
    if type(value) not in _CONTAINERS:
        return True
    level: list[Any] = [value]
    for _ in range(_MAX_DEPTH + 1):
        items = list(
            itertools.chain(
                itertools.chain.from_iterable(
                    map(dict.values, itertools.compress(level, map(operator.is_, map(type, level), _DICT)))
                ),
                itertools.chain.from_iterable(
                    itertools.compress(level, map(operator.is_not, map(type, level), _DICT))
                ),
            )
        )
        kinds = set(map(type, items))
        if bool in kinds:
            return True
        if kinds <= _SCALARS:
            return False
        if any(issubclass(kind, dict | list | tuple) for kind in kinds - _SCALARS - _CONTAINERS):
            return True
        level = list(itertools.compress(items, map(_CONTAINERS.__contains__, map(type, items))))
        if not level:
            return False
        if len(set(map(id, level))) < len(level):
            return True
    return True


def _plain(values: collections.abc.Collection[Any]) -> bool:
    """Whether no boolean and nothing to walk into is among ``values`` or, for a list of flat rows, theirs.

    At C speed: the common large argument (a list of numbers, of flat objects, of flat arrays) is checked
    without a Python step per item.
    """
    kinds = set(map(type, values))
    if kinds <= _SCALARS:
        return True
    if kinds == {dict}:
        return _SCALARS.issuperset(map(type, itertools.chain.from_iterable(map(dict.values, values))))
    if kinds <= {list, tuple}:
        return _SCALARS.issuperset(map(type, itertools.chain.from_iterable(values)))
    return False


class _Walker:
    """Finds the booleans of one call's arguments that their schemas refuse (``found``: path -> expected).

    What a position's schemas say of their members is worked out once per call (``_inner``): the rows of a
    list share their schemas, so a key's is looked up once, not once per row. A value is not walked into
    where no schema takes a number inside it (an ``Any`` field's payload, a ``list[str]``: pydantic does
    not walk an ``Any`` value either), nor where it holds itself (a cycle pydantic reports, or an ``Any``
    value the tool takes as it is); a large one is first scanned for booleans at C speed
    (:func:`_holds_booleans`).
    """

    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self.definitions = definitions
        self.found: dict[tuple[int | str, ...], str] = {}
        # booleans that are refused if pydantic read them as numbers: path -> expected ("": unknown)
        self.unsure: dict[tuple[int | str, ...], str] = {}
        self._seen: set[tuple[int, int]] = set()  # (id of a value, id of its candidates list) walked
        # ids of the schemas in a candidates list -> the one list used for them (kept alive: ids are keys)
        self._interned: dict[tuple[int, ...], list[Any]] = {}
        # id of a candidates list (interned) -> (may be an object, may be an array, takes a number inside)
        # (and all of them ``_UNLISTED``: under a key the object does not list)
        self._about: dict[int, tuple[bool, bool, bool, bool]] = {}
        # (id of a candidates list, object or array, key or index) -> (that list, kept alive so that its id
        # is not reused; the spread schemas of the member)
        self._inner: dict[tuple[int, str, Any], tuple[list[Any], list[Any]]] = {}
        # id of a schema (of the tool's, alive throughout) -> whether it takes a number anywhere inside
        self._numeric: dict[int, bool] = {}
        # id of a candidates list -> (that list, kept alive; the keys some member tags with a Literal)
        self._tags: dict[int, tuple[list[Any], tuple[str, ...]]] = {}
        # (id of a candidates list, an object's values at those keys) -> the members it may match
        self._matching: dict[tuple[int, tuple[Any, ...], tuple[type, ...]], list[Any]] = {}
        self._kept: list[
            list[Any]
        ] = []  # (the lists ``_matching`` gives, kept alive: their ids are memo keys)

    def _holds_numbers(self, candidates: list[Any]) -> bool:
        for schema in candidates:
            holds = self._numeric.get(id(schema))
            if holds is None:
                holds = self._numeric[id(schema)] = _holds_numbers(
                    schema, self.definitions, nested=False, seen=set()
                )
            if holds:
                return True
        return False

    def _member_schemas(self, candidates: list[Any], key: Any, kind: str) -> list[Any]:
        memo = (id(candidates), kind, key)
        known = self._inner.get(memo)
        if known is not None:
            return known[1]
        containers = [schema for schema in candidates if _may_be(schema, kind)]
        if kind == "object":
            inner = _spread_all([_member(schema, key) for schema in containers], self.definitions)
        else:
            inner = _spread_all([_item(schema, key) for schema in containers], self.definitions)
        inner = self._intern(inner)
        self._inner[memo] = (candidates, inner)
        return inner

    def _intern(self, candidates: list[Any]) -> list[Any]:
        """One list for the same schemas: a value met again (a cycle) is known by its list's id."""
        return self._interned.setdefault(tuple(map(id, candidates)), candidates)

    def walk(self, value: Any, candidates: list[Any], path: tuple[int | str, ...]) -> None:
        """Record the booleans in ``value`` (an object or array) its ``candidates`` schemas refuse.

        Iterative, at any depth; a value is walked once per set of schemas (a value shared, or holding
        itself, is not walked again).
        """
        candidates = self._intern(candidates)
        stack: list[tuple[Any, list[Any], tuple[int | str, ...]]] = [(value, candidates, path)]
        seen = self._seen
        about = self._about
        while stack:
            value, candidates, path = stack.pop()
            if type(value) is bool:
                self._check(candidates, path)
                continue
            if not candidates:
                continue  # no schema takes a value here (an unexpected key: pydantic says so)
            key = (id(value), id(candidates))
            if key in seen:
                continue  # shared, or a cycle
            seen.add(key)
            # (objects and arrays come here with something in them to look at: ``_members`` saw to it)
            known = about.get(id(candidates))
            if known is None:
                known = about[id(candidates)] = (
                    any(_may_be(schema, "object") for schema in candidates),
                    any(_may_be(schema, "array") for schema in candidates),
                    self._holds_numbers(candidates),  # (not: an ``Any`` payload, a ``list[str]``)
                    all(schema is _UNLISTED for schema in candidates),
                )
            if known[3]:
                # under a key the object does not list (a field's name, another of its alias choices; or
                # an extra key pydantic ignores): what pydantic made of it is looked at once validated
                self.unsure[path] = _INSIDE
                continue
            if not known[0 if isinstance(value, dict) else 1] or not known[2]:
                continue  # not an object (an array) here: pydantic says so; or no number is taken inside
            if len(value) >= _SCANNED and not _holds_booleans(value):
                continue  # a large value (rows, say) without a boolean inside, seen at C speed
            members = self._members(value, candidates, path)
            members.reverse()  # (popped in order: problems are listed as pydantic lists them)
            stack.extend(members)

    def _tagged(self, candidates: list[Any], value: dict[Any, Any]) -> list[Any]:
        """The ``candidates`` an object may match by its tags (``kind: Literal["cat"]``, a discriminator).

        A union member whose ``Literal`` property the object gives another value is left out.

        Memoised per set of tag values, so the rows of a list share their lists.
        """
        tags = self._tags.get(id(candidates))
        if tags is None:
            tags = self._tags[id(candidates)] = (candidates, _tag_properties(candidates, self.definitions))
        keys = tags[1]
        if not keys:
            return candidates
        given = tuple(value.get(key, _ABSENT) for key in keys)
        try:
            memo = (id(candidates), given, tuple(map(type, given)))  # (true and 1 apart)
            known = self._matching.get(memo)
        except TypeError:  # an unhashable tag value: no member's, pydantic says so
            return candidates
        if known is not None:
            return known
        matching = [
            schema
            for schema in candidates
            if not any(
                given[index] is not _ABSENT
                and key in (tagged := _tags_of(schema, self.definitions))
                and not _same(given[index], tagged[key])
                for index, key in enumerate(keys)
            )
        ]
        self._matching[memo] = matching = self._intern(matching) if matching else candidates
        self._kept.append(matching)
        return matching

    def _members(
        self, value: Any, candidates: list[Any], path: tuple[int | str, ...]
    ) -> list[tuple[Any, list[Any], tuple[int | str, ...]]]:
        """The objects and arrays inside ``value`` to walk, each with its schemas and path.

        Its booleans are checked here, those after an object or array to walk are returned too (problems
        are listed in order); flat objects and arrays without a boolean are left out.
        """
        members: list[tuple[Any, list[Any], tuple[int | str, ...]]] = []
        if isinstance(value, dict):
            candidates = self._tagged(candidates, value)
            for key, item in value.items():
                if type(item) is bool:
                    inner = self._member_schemas(candidates, key, "object")
                    if members:
                        members.append((item, inner, (*path, key)))
                    else:
                        self._check(inner, (*path, key))
                elif isinstance(item, dict | list | tuple) and not _plain(
                    item.values() if isinstance(item, dict) else item
                ):
                    members.append((item, self._member_schemas(candidates, key, "object"), (*path, key)))
            return members
        # a list's items share one schema (a tuple's prefix gives each of its first items its own)
        prefixed = any(isinstance(schema, dict) and schema.get("prefixItems") for schema in candidates)
        for index, item in enumerate(value):
            if type(item) is bool:
                inner = self._member_schemas(candidates, index if prefixed else 0, "array")
                if members:
                    members.append((item, inner, (*path, index)))
                else:
                    self._check(inner, (*path, index))
            elif isinstance(item, dict | list | tuple) and not _plain(
                item.values() if isinstance(item, dict) else item
            ):
                inner = self._member_schemas(candidates, index if prefixed else 0, "array")
                members.append((item, inner, (*path, index)))
        return members

    def _check(self, candidates: list[Any], path: tuple[int | str, ...]) -> None:
        """Record a boolean at ``path`` if its schemas refuse it, or if which of them takes it is unsure.

        Unsure (``unsure``, decided once pydantic has validated the call: :func:`read_as_number`): some
        schemas take a number and others a boolean or anything (a union whose members differ inside, a
        ``Literal`` tag not telling them apart), or the key is not one the object lists (a field given by
        its name, not its alias).
        """
        if not candidates:
            return
        types: set[str] = set()
        numeric: list[Any] = []
        unsure = False
        for schema in candidates:
            kinds = _own_types(schema)
            if kinds is None or "boolean" in kinds:
                unsure = True  # a schema that takes anything, or a boolean
                continue
            types |= kinds
            if kinds & _NUMBER_TYPES:
                numeric.append(schema)
        if not unsure:
            if types & _NUMBER_TYPES:
                self.found[path] = _expected(candidates, self.definitions)
        elif numeric:
            self.unsure[path] = _expected(numeric, self.definitions)
        elif all(schema is _UNLISTED for schema in candidates):
            self.unsure[path] = ""


def _tags_of(schema: Any, definitions: Mapping[str, Any]) -> dict[str, Any]:
    """The properties of an object ``schema`` that take one value only (a ``Literal``): name -> value."""
    if not isinstance(schema, dict) or not isinstance(properties := schema.get("properties"), dict):
        return {}
    tags: dict[str, Any] = {}
    for name, property_schema in properties.items():
        resolved = _resolve(property_schema, definitions)
        if not isinstance(resolved, dict):
            continue
        if "const" in resolved:
            tags[name] = resolved["const"]
        elif isinstance(resolved.get("enum"), list) and len(resolved["enum"]) == 1:
            tags[name] = resolved["enum"][0]
    return tags


def _tag_properties(candidates: list[Any], definitions: Mapping[str, Any]) -> tuple[str, ...]:
    """The keys by which an object tells which of several ``candidates`` it is (none for one candidate)."""
    if len(candidates) < 2:
        return ()
    return tuple(dict.fromkeys(key for schema in candidates for key in _tags_of(schema, definitions)))


def _same(given: Any, tag: Any) -> bool:
    """Whether an object's value is a member's tag (``true`` is no 1 here, as in JSON)."""
    if isinstance(given, bool) or isinstance(tag, bool):
        return given is tag
    return bool(given == tag)


def _may_be(schema: Any, kind: str) -> bool:
    """Whether ``schema`` (spread) may take a value of JSON type ``kind``: its type says so, or says none."""
    kinds = _own_types(schema)
    return kinds is None or kind in kinds


def _member(schema: Any, key: str) -> Any:
    """The schema of ``key``'s value in an object ``schema`` takes; None when it refuses the key."""
    if not isinstance(schema, dict):
        return _UNKNOWN
    properties = schema.get("properties")
    if isinstance(properties, dict) and key in properties:
        return properties[key]
    if schema.get("patternProperties"):
        return _UNKNOWN  # (patterns are not matched here: anything may be taken)
    other = schema.get("additionalProperties", True)
    if other is False:
        return None
    if isinstance(other, dict):
        return other
    # a key the schema does not list: a model's field by its name (populate_by_name), or an extra
    return _UNLISTED if isinstance(properties, dict) and properties else _UNKNOWN


def _item(schema: Any, index: int) -> Any:
    """The schema of the item at ``index`` of an array ``schema`` takes; None when it refuses it."""
    if not isinstance(schema, dict):
        return _UNKNOWN
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list) and index < len(prefix):
        return prefix[index]
    items = schema.get("items", True)
    if items is False:
        return None
    return items if isinstance(items, dict) else _UNKNOWN


def _spread_all(schemas: list[Any], definitions: Mapping[str, Any]) -> list[Any]:
    return [member for schema in schemas if schema is not None for member in _spread(schema, definitions)]


def _spread(schema: Any, definitions: Mapping[str, Any], depth: int = 0) -> list[Any]:
    """The schemas a value is checked against at a position of ``schema``, one by one.

    ``$ref`` is followed, union members (``anyOf``, ``oneOf``) are listed one by one; a schema that is not
    an object is unknown (it takes anything).
    """
    schema = _resolve(schema, definitions)
    if not isinstance(schema, dict) or depth > 16:
        return [_UNKNOWN]
    members = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(members, list) and members and "type" not in schema:
        return [item for member in members for item in _spread(member, definitions, depth + 1)]
    together = schema.get("allOf")
    if isinstance(together, list) and "type" not in schema:
        if len(together) == 1:
            return _spread(together[0], definitions, depth + 1)
        return [_UNKNOWN] if together else [schema]
    return [schema]


def _own_types(schema: Any) -> set[str] | None:
    """The JSON types a spread schema names (``type``), or None when it names none (it takes anything)."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {str(item) for item in kind}
    return None


def _holds_numbers(
    schema: Any, definitions: Mapping[str, Any], *, nested: bool, seen: set[tuple[str, bool]]
) -> bool:
    """Whether a schema takes a number anywhere inside an object or array (or at its level, if ``nested``)."""
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        reference = (schema["$ref"], nested)
        if reference in seen:
            return False  # a recursive model: its numbers were found (or not) where it was first met
        seen.add(reference)
        schema = _resolve(schema, definitions)
    if not isinstance(schema, dict):
        return False
    if nested and _NUMBER_TYPES & (_own_types(schema) or set()):
        return True
    inner: list[Any] = []
    for keyword in ("anyOf", "oneOf", "allOf"):
        members = schema.get(keyword)
        if isinstance(members, list) and any(
            _holds_numbers(member, definitions, nested=nested, seen=seen) for member in members
        ):
            return True
    for keyword in ("properties", "patternProperties"):
        members = schema.get(keyword)
        if isinstance(members, dict):
            inner.extend(members.values())
    for keyword in ("additionalProperties", "items"):
        inner.append(schema.get(keyword))
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list):
        inner.extend(prefix)
    return any(_holds_numbers(member, definitions, nested=True, seen=seen) for member in inner)


def _resolve(schema: Any, definitions: Mapping[str, Any], depth: int = 0) -> Any:
    """A schema with its local ``$ref`` (``#/$defs/Name``) followed."""
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and depth < 8:
        reference = schema["$ref"]
        if not reference.startswith("#/$defs/"):
            return schema
        schema = definitions.get(reference.removeprefix("#/$defs/"))
        depth += 1
    return schema


def _schema_types(schema: Any, definitions: Mapping[str, Any] | None = None) -> set[str] | None:
    """The JSON types a property schema takes (``type``, or its ``anyOf``/``oneOf`` members'), else None."""
    schema = _resolve(schema, definitions or {})
    if not isinstance(schema, dict):
        return None
    own = _own_types(schema)
    if own is not None:
        return own
    options = schema.get("anyOf") or schema.get("oneOf")
    if not isinstance(options, list) or not options:
        return None
    types: set[str] = set()
    for option in options:
        found = _schema_types(option, definitions)
        if found is None:
            return None
        types |= found
    return types


def _expected(schemas: list[Any], definitions: Mapping[str, Any]) -> str:
    """What the schemas of one position take, as pydantic's messages say it (``1 or 2``, ``a valid number``).

    Plain numbers are said once (``a valid number`` for a float, else ``a valid integer``; null left unsaid,
    as pydantic leaves it); an enum's values and a union's other members are listed.
    """
    words = [text for schema in schemas for text in _expected_values(schema, definitions)]
    if set(words) <= _PLAIN_NUMBER_WORDS:
        return "a valid number" if "a valid number" in words else "a valid integer"
    return " or ".join(dict.fromkeys(words))


def _expected_values(schema: Any, definitions: Mapping[str, Any]) -> list[str]:
    """What a schema takes, in the words of pydantic's messages (``1 or 2``, ``a valid number``)."""
    schema = _resolve(schema, definitions)
    if not isinstance(schema, dict):
        return []
    if isinstance(schema.get("enum"), list):
        return [" or ".join(describe_argument(value) for value in schema["enum"])]
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        return [text for option in options for text in _expected_values(option, definitions)]
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    return [_TYPE_WORDS[item] for item in kinds if item in _TYPE_WORDS]
