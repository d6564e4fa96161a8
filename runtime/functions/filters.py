"""SNS filter policies and Lambda's event filter patterns: compiled once (refusing what SNS refuses), matched often.

Both are the same language (AWS's event-ruler: a JSON object whose leaves are lists of match conditions), so one
core compiles and matches them. What differs sits in a `_Dialect` (limits, operators, error wording) and in how a
key's values are found: SNS's MessageAttributes are typed `{Type, Value}` pairs; a message body and an SQS record
are plain JSON, walked along the key's path. Matching works on "tokens", a value tagged with its JSON kind, so that
the string "100" never equals the number 100 and `true` never equals 1.

Pure (stdlib only), so the spec checks a pattern or a policy at deploy, and topics and the SQS poller match with
it, all from here.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from operator import eq, ge, gt, le, lt
from typing import Any, Callable, Literal

Token = tuple[str, Any]          # ("s", str) | ("n", float) | ("b", bool) | ("z", None) | ("x", None): unmatchable
_UNMATCHABLE: Token = ("x", None)    # a value that is there (exists) but that no condition matches
_NUMBER_RE = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")   # a JSON number, as SNS's Number type
_OPERATORS = frozenset({"prefix", "suffix", "equals-ignore-case", "anything-but", "numeric", "exists", "cidr",
                        "wildcard"})
_COMPARE = {"=": eq, "<": lt, "<=": le, ">": gt, ">=": ge}
_MAX_DEPTH = 64                  # objects within objects (and `$or`s): bounds the recursion of compiling
_LOWER = frozenset({"<", "<="})
_UPPER = frozenset({">", ">="})


class FilterError(ValueError):
    """A policy or pattern SNS / Lambda would refuse; the message says which part and why."""


@dataclass(frozen=True)
class _Dialect:
    """What SNS and Lambda each accept: the limits and operators of its documentation, and its error wording."""
    prefix: str                           # the start of every error message
    size_label: str
    max_size: int                         # of the JSON text
    count_bytes: bool                     # the size in UTF-8 bytes (SNS) or in characters (Lambda)
    max_keys: int | None                  # top-level keys in one alternative
    max_combinations: int | None
    nesting: bool                         # objects inside the policy (a JSON body or record) or not (attributes)
    decimals: int                         # numbers compare at this many decimal places
    anything_but_inner: frozenset[str]    # operators allowed in {"anything-but": {op: ..}}
    affix_ignore_case: bool               # {"prefix": {"equals-ignore-case": ..}} (EventBridge's)


_SNS_BODY = _Dialect(prefix="Invalid parameter: FilterPolicy: ", size_label="256 KB", max_size=256 * 1024,
                     count_bytes=True, max_keys=5, max_combinations=150, nesting=True, decimals=5,
                     anything_but_inner=frozenset({"prefix", "suffix"}), affix_ignore_case=False)
_SNS_ATTRIBUTES = replace(_SNS_BODY, nesting=False)
# Lambda's Filter.Pattern: at most 4096 characters; its rule syntax (with-sqs-filtering, invocation-eventfiltering)
# has no anything-but prefix/suffix, nor wildcard; numbers as EventBridge's (six decimal places).
_LAMBDA = _Dialect(prefix="Invalid filter pattern definition: ", size_label="4096 characters", max_size=4096,
                   count_bytes=False, max_keys=None, max_combinations=None, nesting=True, decimals=6,
                   anything_but_inner=frozenset(), affix_ignore_case=True)


# -- matching ---------------------------------------------------------------------------------------------------

class _Condition:
    """One element of a key's list, other than an exact value or `exists`."""
    __slots__ = ()

    def match(self, token: Token) -> bool:
        raise NotImplementedError


class _Affix(_Condition):
    __slots__ = ("text", "suffix", "fold")

    def __init__(self, text: str, *, suffix: bool, fold: bool) -> None:
        self.text, self.suffix, self.fold = (text.casefold() if fold else text), suffix, fold

    def match(self, token: Token) -> bool:
        if token[0] != "s":
            return False
        value = token[1].casefold() if self.fold else token[1]
        return value.endswith(self.text) if self.suffix else value.startswith(self.text)


class _IgnoreCase(_Condition):
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text.casefold()

    def match(self, token: Token) -> bool:
        return token[0] == "s" and token[1].casefold() == self.text


class _AnythingBut(_Condition):
    """Matches a value that is none of `tokens` (or does not have the affix): present values only, as SNS."""
    __slots__ = ("tokens", "affix")

    def __init__(self, tokens: frozenset[Token], affix: _Affix | None) -> None:
        self.tokens, self.affix = tokens, affix

    def match(self, token: Token) -> bool:
        if token == _UNMATCHABLE:
            return False
        if self.affix is not None:
            return token[0] == "s" and not self.affix.match(token)
        return token not in self.tokens


class _Numeric(_Condition):
    __slots__ = ("bounds",)

    def __init__(self, bounds: tuple[tuple[str, float], ...]) -> None:
        self.bounds = bounds

    def match(self, token: Token) -> bool:
        if token[0] != "n":
            return False
        return all(_COMPARE[op](token[1], bound) for op, bound in self.bounds)


class _Cidr(_Condition):
    __slots__ = ("network",)

    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self.network = network

    def match(self, token: Token) -> bool:
        if token[0] != "s":
            return False
        try:
            return ipaddress.ip_address(token[1]) in self.network
        except ValueError:
            return False


@dataclass(frozen=True)
class _Leaf:
    """One key's list: matches when any of its conditions matches one of the key's values (OR)."""
    path: tuple[str, ...]
    exact: frozenset[Token]
    conditions: tuple[_Condition, ...]
    exists: frozenset[bool]              # exists: true / false in the list

    def match(self, values: list[Token]) -> bool:
        if (True in self.exists and values) or (False in self.exists and not values):
            return True
        return any(token in self.exact or any(c.match(token) for c in self.conditions) for token in values)


@dataclass(frozen=True)
class _All:
    """Every leaf and every `$or` of one object (AND)."""
    leaves: tuple[_Leaf, ...]
    alternatives: tuple[tuple[_All, ...], ...]     # each `$or`: at least one of its objects matches

    def match(self, values: Callable[[tuple[str, ...]], list[Token]]) -> bool:
        return (all(leaf.match(values(leaf.path)) for leaf in self.leaves)
                and all(any(option.match(values) for option in options) for options in self.alternatives))


class Policy:
    """A compiled filter policy or pattern; `matches` reads the data, never the policy's JSON again."""

    def __init__(self, root: _All, lookup: Callable[[Any, tuple[str, ...], int], list[Token]], decimals: int,
                 *, needs_object: bool) -> None:
        self._root, self._lookup, self._decimals, self._needs_object = root, lookup, decimals, needs_object

    def matches(self, data: Any) -> bool:
        if not self._root.leaves and not self._root.alternatives:
            return True                                     # an empty policy filters nothing out
        if self._needs_object and not isinstance(data, dict):
            return False                                    # SNS: a body that is not a JSON object matches nothing
        return self._root.match(lambda path: self._lookup(data or {}, path, self._decimals))


def _token(value: Any, decimals: int) -> Token:
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:                  # an integer beyond any float
            return _UNMATCHABLE
        return ("n", round(number, decimals)) if number == number and abs(number) != float("inf") else _UNMATCHABLE
    if value is None:
        return ("z", None)
    return _UNMATCHABLE


def _json_values(data: Any, path: tuple[str, ...], decimals: int) -> list[Token]:
    """The leaf values at `path` in parsed JSON, arrays anywhere on the way standing for each of their elements."""
    nodes = [data]
    for key in path:
        nodes = [node[key] for node in _flatten(nodes) if isinstance(node, dict) and key in node]
    return [_token(node, decimals) for node in _flatten(nodes) if not isinstance(node, dict)]


def _flatten(nodes: list[Any]) -> list[Any]:
    """Arrays' elements in place of the arrays, however deep (without recursion: a body may nest deeply)."""
    flat: list[Any] = []
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        else:
            flat.append(node)
    return flat


def _attribute_values(attributes: Any, path: tuple[str, ...], decimals: int) -> list[Token]:
    """An SNS message attribute's values: String as a string, Number as a number, String.Array's elements;
    Binary attributes are ignored (SNS does not filter on them), so they count as absent."""
    attribute = attributes.get(path[0]) if isinstance(attributes, dict) else None
    if not isinstance(attribute, dict):
        return []
    kind = str(attribute.get("Type") or attribute.get("DataType") or "")
    value = attribute.get("Value", attribute.get("StringValue"))
    if kind.startswith("Binary") or not isinstance(value, str):
        return []
    if kind.startswith("String.Array"):
        try:
            elements = json.loads(value)
        except ValueError:
            return [_UNMATCHABLE]
        return _json_values(elements, (), decimals) if isinstance(elements, list) else [_UNMATCHABLE]
    if kind.startswith("Number"):
        return [_token(float(value), decimals) if _NUMBER_RE.match(value) else _UNMATCHABLE]
    return [("s", value)] if kind.startswith("String") else []


# -- compiling --------------------------------------------------------------------------------------------------

class _Compiler:
    """Turns the JSON into `_All`/`_Leaf` nodes, refusing (FilterError) what the dialect's service would refuse."""

    def __init__(self, dialect: _Dialect, what: str) -> None:
        self.dialect, self.what = dialect, what

    def fail(self, reason: str, path: tuple[str, ...] = ()) -> FilterError:
        where = f" (at key '{'.'.join(path)}')" if path else ""
        return FilterError(f"{self.dialect.prefix}{reason}{where}")

    def load(self, source: Any) -> dict[str, Any]:
        text = source if isinstance(source, str) else json.dumps(source, separators=(",", ":"), default=str)
        size = len(text.encode()) if self.dialect.count_bytes else len(text)
        if size > self.dialect.max_size:
            raise self.fail(f"{self.what} is larger than {self.dialect.size_label} ({size})")
        if isinstance(source, str):
            try:
                source = json.loads(source) if source.strip() else {}
            except RecursionError:
                raise self.fail(f"{self.what} is nested too deeply") from None
            except ValueError as exc:
                raise self.fail(f"failed to parse JSON. {exc}") from None
        if not isinstance(source, dict):
            raise self.fail(f"{self.what} must be a JSON object, not {type(source).__name__}")
        return source

    def compile(self, obj: dict[str, Any], path: tuple[str, ...] = (), depth: int = 0) -> _All:
        if depth > _MAX_DEPTH:
            raise self.fail(f"{self.what} is nested too deeply (more than {_MAX_DEPTH} objects in objects)", path)
        leaves: list[_Leaf] = []
        alternatives: list[tuple[_All, ...]] = []
        for key, value in obj.items():
            if not isinstance(key, str):
                raise self.fail(f"key {key!r} must be a string", path)
            if key == "$or" and _is_or(value):
                alternatives.append(tuple(self.compile(option, path, depth + 1) for option in value))
            elif isinstance(value, dict):
                if not self.dialect.nesting:
                    raise FilterError("Invalid parameter: Filter policy scope MessageAttributes does not support "
                                      f"nested filter policy (at key '{key}'): use FilterPolicyScope MessageBody "
                                      "to filter on a JSON body's nested properties")
                # Values are looked up by their whole path from the root, so a nested object's leaves and `$or`s
                # hold beside this object's own (AND).
                inner = self.compile(value, path + (key,), depth + 1)
                leaves.extend(inner.leaves)
                alternatives.extend(inner.alternatives)
            elif isinstance(value, list):
                leaves.append(self.leaf(value, path + (key,)))
            else:
                raise self.fail(f'"{key}" must be an object or an array', path + (key,))
        return _All(tuple(leaves), tuple(alternatives))

    def leaf(self, values: list[Any], path: tuple[str, ...]) -> _Leaf:
        if not values:
            raise self.fail("Empty arrays are not allowed", path)
        exact: set[Token] = set()
        conditions: list[_Condition] = []
        exists: set[bool] = set()
        for value in values:
            if isinstance(value, dict):
                condition = self.condition(value, path)
                if isinstance(condition, bool):
                    exists.add(condition)
                else:
                    conditions.append(condition)
            else:
                exact.add(self.scalar(value, path))
        return _Leaf(path, frozenset(exact), tuple(conditions), frozenset(exists))

    def scalar(self, value: Any, path: tuple[str, ...]) -> Token:
        if isinstance(value, (str, bool, int, float)) or value is None:
            token = _token(value, self.dialect.decimals)
            if token != _UNMATCHABLE:
                return token
        raise self.fail("Match value must be String, number, true, false, or null", path)

    def condition(self, expression: dict[str, Any], path: tuple[str, ...]) -> _Condition | bool:
        """One `{operator: operand}`; `exists` comes back as its bool."""
        if len(expression) != 1:
            raise self.fail("Only one key allowed in match expression", path)
        [(operator, operand)] = expression.items()
        if operator == "exists":
            if not isinstance(operand, bool):
                raise self.fail("exists match pattern must be either true or false.", path)
            return operand
        if operator in ("prefix", "suffix"):
            return self.affix(operator, operand, path)
        if operator == "equals-ignore-case":
            return _IgnoreCase(self.text(operator, operand, path))
        if operator == "anything-but":
            return self.anything_but(operand, path)
        if operator == "numeric":
            return _Numeric(self.numeric(operand, path))
        if operator == "cidr":
            try:
                return _Cidr(ipaddress.ip_network(self.text(operator, operand, path), strict=False))
            except ValueError:
                raise self.fail(f"Malformed CIDR: {operand}", path) from None
        raise self.fail(f"Unrecognized match type {operator}", path)

    def text(self, operator: str, operand: Any, path: tuple[str, ...]) -> str:
        if not isinstance(operand, str):
            raise self.fail(f"{operator} match pattern must be a string", path)
        return operand

    def affix(self, operator: str, operand: Any, path: tuple[str, ...]) -> _Affix:
        fold = False
        if isinstance(operand, dict) and self.dialect.affix_ignore_case and list(operand) == ["equals-ignore-case"]:
            operand, fold = operand["equals-ignore-case"], True
        return _Affix(self.text(operator, operand, path), suffix=operator == "suffix", fold=fold)

    def anything_but(self, operand: Any, path: tuple[str, ...]) -> _AnythingBut:
        if isinstance(operand, dict):
            if len(operand) != 1 or next(iter(operand)) not in self.dialect.anything_but_inner:
                inner = ", ".join(map(str, operand)) or "{}"
                raise self.fail(f"Unsupported anything-but pattern: {inner}", path)
            [(operator, text)] = operand.items()
            return _AnythingBut(frozenset(), self.affix(operator, text, path))
        items = operand if isinstance(operand, list) else [operand]
        if not items:
            raise self.fail("Empty arrays are not allowed", path)
        if any(not isinstance(item, (str, int, float)) or isinstance(item, bool) for item in items):
            raise self.fail("anything-but takes strings or numbers, not true, false, null or objects", path)
        return _AnythingBut(frozenset(self.scalar(item, path) for item in items), None)

    def numeric(self, operand: Any, path: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
        """`[op, n]` or a range `[">"|">=", low, "<"|"<=", high]`, bounds within SNS's -1e9..1e9."""
        if not isinstance(operand, list) or not operand:
            raise self.fail("Value of numeric must be an array.", path)
        if len(operand) > 4:
            raise self.fail("Too many terms in numeric range expression", path)
        bounds: list[tuple[str, float]] = []
        for index in range(0, len(operand), 2):
            operator = operand[index]
            if not isinstance(operator, str):
                raise self.fail(f"{'Invalid member in numeric match' if not index else 'Bad value in numeric range'}"
                                f": {json.dumps(operator)}", path)
            allowed = {"=", "<", "<=", ">", ">="} if not index else _LOWER
            if operator not in allowed:
                raise self.fail(f"{'Unrecognized' if not index else 'Bad'} numeric range operator: {operator}", path)
            if index and bounds[0][0] not in _UPPER:
                raise self.fail("Too many elements in numeric expression", path)
            number = operand[index + 1] if index + 1 < len(operand) else None
            if not isinstance(number, (int, float)) or isinstance(number, bool):
                raise self.fail(f"Value of {'equals' if operator == '=' else operator} must be numeric", path)
            bounds.append((operator, self.bound(number, path)))
        if len(bounds) == 2 and bounds[1][1] <= bounds[0][1]:
            raise self.fail("Bottom must be less than top", path)
        return tuple(bounds)

    def bound(self, number: int | float, path: tuple[str, ...]) -> float:
        decimals = self.dialect.decimals
        exponent = Decimal(repr(number)).as_tuple().exponent
        if not -1e9 <= number <= 1e9 or (isinstance(exponent, int) and -exponent > decimals):
            raise self.fail(f"numeric bound {number} is out of range: use -1000000000 to 1000000000 with at "
                            f"most {decimals} decimal places", path)
        return round(float(number), decimals)


def _is_or(value: Any) -> bool:
    """As SNS: `$or` is the operator only given a list of at least two objects none of whose keys is an operator;
    otherwise it is an ordinary key."""
    return (isinstance(value, list) and len(value) >= 2 and all(isinstance(option, dict) for option in value)
            and not any(_OPERATORS.intersection(option) for option in value))


def _check_limits(compiler: _Compiler, policy: dict[str, Any], root: _All) -> None:
    """SNS's: at most 5 top-level keys in any one alternative, and at most 150 combinations, a nested key's list
    counting its length times its depth, the `$or`s' options adding up (subscription-filter-policy-constraints)."""
    dialect = compiler.dialect
    if dialect.max_keys is not None and _top_keys(policy) > dialect.max_keys:
        raise compiler.fail(f"Filter policy can not have more than {dialect.max_keys} keys")
    if dialect.max_combinations is not None:
        combinations = _combinations(root)
        if combinations > dialect.max_combinations:
            raise compiler.fail(f"Filter policy is too complex: {combinations} combinations of values, "
                                f"at most {dialect.max_combinations}")


def _top_keys(policy: dict[str, Any]) -> int:
    """The top-level keys of the policy's largest alternative (nested keys do not count, as SNS's)."""
    plain = sum(1 for key, value in policy.items() if not (key == "$or" and _is_or(value)))
    options = policy.get("$or") if _is_or(policy.get("$or")) else None
    return plain + (max(map(_top_keys, options)) if options else 0)


def _combinations(node: _All) -> int:
    total = 1
    for leaf in node.leaves:
        total *= (len(leaf.exact) + len(leaf.conditions) + len(leaf.exists)) * len(leaf.path)
    for options in node.alternatives:
        total *= sum(map(_combinations, options))
    return total


def compile_policy(policy: Any, *, scope: Literal["MessageAttributes", "MessageBody"]) -> Policy:
    """An SNS subscription's FilterPolicy (a dict or its JSON text) for `scope`, checked as SNS checks it."""
    if scope not in ("MessageAttributes", "MessageBody"):
        raise FilterError(f"Invalid parameter: FilterPolicyScope: Invalid value [{scope}]. "
                          "Please use either MessageBody or MessageAttributes")
    dialect = _SNS_ATTRIBUTES if scope == "MessageAttributes" else _SNS_BODY
    compiler = _Compiler(dialect, "Filter policy")
    loaded = compiler.load(policy)
    root = compiler.compile(loaded)
    _check_limits(compiler, loaded, root)
    if scope == "MessageAttributes":
        return Policy(root, _attribute_values, dialect.decimals, needs_object=False)
    return Policy(root, _json_values, dialect.decimals, needs_object=True)


def compile_pattern(pattern: Any) -> Policy:
    """A Lambda event source's filter pattern (FilterCriteria.Filters[].Pattern, a dict or its JSON text), matched
    against an SQS record with its body parsed when it is JSON."""
    compiler = _Compiler(_LAMBDA, "Filter pattern")
    return Policy(compiler.compile(compiler.load(pattern)), _json_values, _LAMBDA.decimals, needs_object=True)
