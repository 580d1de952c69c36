"""The JSON wire format's building blocks: ids, timestamps and checked field reads.

Each reader takes the parsed document and a key, and names the key in its error.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self, TypeVar

from .errors import InvalidMessageError

try:  # tinytownd[fast]: the same text, sooner
    import orjson

    _orjson: Any = orjson
except ImportError:  # the pure-Python path, the default
    _orjson = None

UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_standard_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_scan_once: Any = vars(json.JSONDecoder())["scan_once"]  # the C scanner json.loads uses


def fast_json() -> bool:
    """Whether orjson (tinytownd[fast]) reads and writes the JSON."""
    return _orjson is not None


@contextlib.contextmanager
def standard_json() -> Iterator[None]:
    """Within: the standard library's json, as without tinytownd[fast] (bench, tests)."""
    global _orjson
    saved, _orjson = _orjson, None
    try:
        yield
    finally:
        _orjson = saved


def dumps(doc: Any) -> str:
    """Compact JSON text, non-ASCII as is: the same text with orjson as without it.

    orjson writes a float's negative exponent without its leading zero (``1.5e-7``, where
    Python writes ``1.5e-07``), and refuses ints past 64 bits, keys that are not strings
    and lone surrogates: documents holding any of these take the standard library's way.
    """
    plain = isinstance(doc, dict | list | tuple) and not _has_float(doc)
    if _orjson is not None and plain:
        try:
            text: str = _orjson.dumps(doc).decode()
            return text
        except (TypeError, _orjson.JSONEncodeError):
            pass
    standard: str = _standard_dumps(doc)
    return standard


def _has_float(container: dict[str, Any] | list[Any] | tuple[Any, ...]) -> bool:
    """Whether a document holds a float, or anything but JSON's plain types, at any depth
    (str and int subclasses such as our enums are plain: both libraries write their value).
    Written for speed: most documents are flat and all text."""
    items: Iterable[Any] = container.values() if isinstance(container, dict) else container
    for item in items:
        kind = type(item)
        if kind is str or item is None or kind is int or kind is bool:
            continue
        if kind is dict or kind is list or kind is tuple:
            if _has_float(item):
                return True
        elif not isinstance(item, str | int):
            return True
    return False


def _loads(text: str | bytes) -> Any:
    """``json.loads``, by orjson when installed. What orjson refuses (NaN, malformed
    text) is left to the standard library, whose answer and error message users see, and
    so is any document with a number orjson read as a float: it reads an int past 64
    bits as one, where Python keeps every digit."""
    if _orjson is not None:
        try:
            doc = _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
        else:
            if not (isinstance(doc, dict | list) and _has_float(doc)):
                return doc
    return json.loads(text)


Id = str | uuid.UUID
E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")


def new_id() -> str:
    return str(uuid.uuid4())


#: Ids already found canonical: a town names the same few agents over and over, and
#: a set lookup costs a tenth of the match.
_CANONICAL: set[str] = set()
_REMEMBERED = 4096


def is_canonical_id(text: str) -> bool:
    """Whether ``text`` is lowercase hyphenated UUID text."""
    if text in _CANONICAL:
        return True
    if UUID_TEXT.fullmatch(text) is None:
        return False
    if len(_CANONICAL) >= _REMEMBERED:
        _CANONICAL.clear()  # ids of agents long gone: start again
    _CANONICAL.add(text)
    return True


def canonical_id(value: Id, what: str = "id") -> str:
    """Lowercase hyphenated UUID text for a ``uuid.UUID`` or any UUID string."""
    if type(value) is str and is_canonical_id(value):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidMessageError(f"{what}: {value!r} is not a UUID") from None


def now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``, as peers expect."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # %-formatting is about twice as fast as isoformat() here, and this is the hot path.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond,
    )


def parse_time(text: Any, what: str) -> datetime:
    """The UTC moment in RFC 3339 ``text``; an aware datetime (a reader that parsed it
    already: the hash form) is taken as it is."""
    if type(text) is datetime and text.tzinfo is UTC:
        return text
    if not isinstance(text, str) or len(text) < 20 or text[10] not in "Tt ":
        raise InvalidMessageError(f"{what}: {text!r} is not an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidMessageError(f"{what}: {text!r} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise InvalidMessageError(f"{what}: {text!r} has no UTC offset")
    return moment.astimezone(UTC)


def required(doc: Mapping[str, Any], key: str) -> Any:
    try:
        return doc[key]
    except KeyError:
        raise InvalidMessageError(f"missing field {key!r}") from None


def text(doc: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = doc.get(key, default) if default is not None else required(doc, key)
    if not isinstance(value, str):
        raise InvalidMessageError(f"{key}: expected a string, got {value!r:.60}")
    return value


def opt_text(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidMessageError(f"{key}: expected a string or null, got {value!r:.60}")
    return value


def ident(doc: Mapping[str, Any], key: str) -> str:
    return canonical_id(required(doc, key), key)


def opt_ident(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return None if value is None else canonical_id(value, key)


def time_field(doc: Mapping[str, Any], key: str) -> datetime:
    return parse_time(required(doc, key), key)


def opt_time_field(doc: Mapping[str, Any], key: str) -> datetime | None:
    value = doc.get(key)
    return None if value is None else parse_time(value, key)


def count(doc: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default) if default is not None else required(doc, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidMessageError(f"{key}: expected an integer >= 0, got {value!r:.60}")
    return value


def choice(doc: Mapping[str, Any], key: str, kind: type[E], default: E) -> E:
    value = doc.get(key, default)
    try:
        return kind._value2member_map_[value]  # type: ignore[return-value]
    except (KeyError, TypeError):
        allowed = ", ".join(kind)
        raise InvalidMessageError(f"{key}: {value!r:.60} is not one of {allowed}") from None


def quick_load(text: str | bytes) -> Any:
    """The hot path's ``json.loads``: None where :func:`load` must take care (malformed
    text, or an escape that may hide a lone surrogate). A caller keeps the result only
    if every value has the type it expects: orjson reads an int past 64 bits as a float,
    which no such caller expects."""
    if _orjson is not None:
        try:
            return _orjson.loads(text)  # refuses lone surrogates itself
        except _orjson.JSONDecodeError:
            return None
    if (b"\\u" in text) if isinstance(text, bytes) else ("\\u" in text):
        return None
    try:
        # json.loads costs twice this: it sniffs the bytes' encoding and skips
        # whitespace in Python. Text with either (a BOM, UTF-16, blanks) is not what a
        # peer writes, and fails here: load() then reads it.
        decoded = text.decode() if isinstance(text, bytes) else text
        doc, end = _scan_once(decoded, 0)
    except (ValueError, StopIteration, RecursionError):  # UnicodeDecodeError included
        return None
    return doc if end == len(decoded) else None


def load(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        doc = _loads(text)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise InvalidMessageError(f"{what} is not JSON text: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidMessageError(f"{what} is JSON but not an object")
    escaped = b"\\u" in text if isinstance(text, bytes) else "\\u" in text
    if escaped:
        # JSON lets "\ud800" stand alone; such a string is not text and could not be
        # sent on. Checked only when an escape is present: not on the hot path.
        try:
            dumps(doc).encode()
        except UnicodeEncodeError:
            raise InvalidMessageError(
                f"{what} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), not text"
            ) from None
    return doc


def extra(doc: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    unknown = doc.keys() - known
    return {key: doc[key] for key in doc if key in unknown} if unknown else {}


def build(cls: type[T], values: dict[str, Any]) -> T:
    """An instance of a frozen dataclass from checked values, without its __init__.

    Decoding is on every receive and state read; the generated __init__ of a frozen
    dataclass sets each field through object.__setattr__, which costs more than all
    the checks.
    """
    instance = object.__new__(cls)
    instance.__dict__.update(values)
    return instance


def coerce_enums(instance: object, **kinds: type[StrEnum]) -> None:
    """Turn plain strings given for enum fields into the enum (InvalidMessageError if unknown)."""
    for name, kind in kinds.items():
        value = getattr(instance, name)
        if not isinstance(value, kind):
            try:
                object.__setattr__(instance, name, kind(value))
            except ValueError:
                allowed = ", ".join(kind)
                raise InvalidMessageError(f"{name}: {value!r} is not one of {allowed}") from None


def canonical_ids(instance: object, *names: str) -> None:
    """Store the named id fields (UUID objects or any UUID text) as canonical text."""
    for name in names:
        value = getattr(instance, name)
        if value is not None:
            object.__setattr__(instance, name, canonical_id(value, name))


class Document:
    """JSON text in and out, shared by every model: ``to_dict``/``from_dict`` are the
    model's own, the rest is here once."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Self:
        raise NotImplementedError

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        """Parse one document; raise :class:`InvalidMessageError` saying what is wrong."""
        doc = quick_load(text)
        if type(doc) is dict:
            usual = cls.well_formed(doc)
            if usual is not None:
                return usual
        return cls.from_dict(load(text, cls.__name__.lower()))

    @classmethod
    def well_formed(cls, doc: dict[str, Any]) -> Self | None:
        """The document in ``doc`` when it is the usual kind, by quick checks that accept
        only what :meth:`from_dict` would read the same; None to leave it to
        :meth:`from_dict`. A model whose documents are read on a hot path has one."""
        return None

    def evolve(self, **changes: Any) -> Self:
        """A copy with some fields changed (the models are immutable)."""
        return replace(self, **changes)  # type: ignore[type-var]
