"""The emulator's fault injection: the :class:`Faults` settings, their text and JSON forms, and
the seeded draw that decides, call by call, which fault (if any) a call gets.

Faults (5xx, 429, dropped connections, lost answers, business errors, slow answers, expired
URLs) are drawn from a seeded RNG so that runs are reproducible.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import threading
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ENDPOINTS",
    "NO_FAULT",
    "FaultInjector",
    "Faults",
    "Outcome",
    "Plan",
    "faults_from_json",
    "faults_to_json",
    "is_number",
    "parse_faults",
]

#: The calls faults can target: GetPreUploadUrl, the presigned PUT, ReportUploadSuccess.
ENDPOINTS: Final = frozenset({"pre", "put", "report"})

_FRACTION_FIELDS: Final = (
    "error_5xx",
    "rate_429",
    "drop_before",
    "drop_after",
    "business_error",
    "slow",
    "expire_url",
)
_SECONDS_FIELDS: Final = ("retry_after", "slow_seconds", "delay_seconds")


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Faults:
    """Which failures the emulator injects, as fractions of the calls in ``endpoints``.

    The outcome faults (drop_before, error_5xx, rate_429, business_error, expire_url,
    drop_after) are exclusive: one uniform draw per call picks at most one of them, in that
    order of precedence, so each fires on its stated fraction of calls as long as they sum
    to 1 or less. ``slow`` is drawn separately and adds ``slow_seconds`` to an answer;
    ``delay_seconds`` is added to every answer of the three calls, whatever ``endpoints``.
    """

    error_5xx: float = 0.0
    rate_429: float = 0.0
    retry_after: float = 1.0
    drop_before: float = 0.0
    drop_after: float = 0.0
    business_error: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 2.0
    expire_url: float = 0.0
    delay_seconds: float = 0.0
    endpoints: frozenset[str] = ENDPOINTS
    seed: int | None = None

    def __post_init__(self) -> None:
        """Checks every field; raises ValueError naming the first bad one."""
        self.endpoints = frozenset(self.endpoints)
        for name in _FRACTION_FIELDS:
            value = getattr(self, name)
            if not is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction between 0 and 1, got {value!r}")
        for name in _SECONDS_FIELDS:
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        unknown = self.endpoints - ENDPOINTS
        if unknown:
            raise ValueError(
                f"endpoints must be among {sorted(ENDPOINTS)}, got {sorted(unknown)!r}"
            )
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool)
        ):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


# --- text and JSON forms ----------------------------------------------------------------

# Spec keys of parse_faults, short forms first; the dataclass field names work too.
_SPEC_KEYS: Final[dict[str, str]] = {
    "5xx": "error_5xx",
    "429": "rate_429",
    "business": "business_error",
    "expire": "expire_url",
    "delay": "delay_seconds",
    **{f.name: f.name for f in dataclasses.fields(Faults)},
}


def parse_faults(spec: str) -> Faults:
    """Parses ``"5xx=0.1,429=0.05,endpoints=pre+put,seed=3"`` into :class:`Faults`.

    Keys: 5xx, 429, retry_after, drop_before, drop_after, business, slow, slow_seconds,
    expire, delay, endpoints (``+``-separated among pre, put, report), seed; the
    :class:`Faults` field names are accepted as well. An empty spec means no faults.
    Raises ValueError whose message names the bad item.
    """
    values: dict[str, Any] = {}
    for raw_item in spec.split(","):
        item = raw_item.strip()
        if not item:
            continue
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep:
            raise ValueError(f"bad fault item {item!r}: expected key=value")
        name = _SPEC_KEYS.get(key.lower())
        if name is None:
            raise ValueError(f"bad fault item {item!r}: unknown key {key!r}")
        if name in values:
            raise ValueError(f"bad fault item {item!r}: {key!r} given twice")
        try:
            values[name] = _spec_value(name, text)
            Faults(**{name: values[name]})  # checks the range of this one item
        except ValueError as exc:
            raise ValueError(f"bad fault item {item!r}: {exc}") from None
    return Faults(**values)


def _spec_value(name: str, text: str) -> Any:
    """Converts the text of one spec item to the type of the Faults field ``name``."""
    if name == "endpoints":
        names = [part.strip() for part in text.split("+")]
        if not all(names) or not set(names) <= ENDPOINTS:
            raise ValueError("endpoints must be pre, put and/or report joined by '+'")
        return frozenset(names)
    if name == "seed":
        return int(text)
    return float(text)


def faults_to_json(faults: Faults) -> dict[str, Any]:
    """The JSON object form of ``faults`` (``endpoints`` as a sorted list)."""
    data = dataclasses.asdict(faults)
    data["endpoints"] = sorted(faults.endpoints)
    return data


def faults_from_json(obj: object) -> Faults:
    """Builds Faults from the JSON body of ``POST /_emulator/faults``.

    Raises ValueError for an unknown field or a bad value, TypeError for some values of the
    wrong type.
    """
    if not isinstance(obj, dict):
        raise ValueError("body must be a JSON object of Faults fields")
    known = {f.name for f in dataclasses.fields(Faults)}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ValueError(f"unknown Faults fields: {unknown}")
    values = dict(obj)
    if "endpoints" in values:
        endpoints = values["endpoints"]
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise ValueError("endpoints must be a list of strings")
        values["endpoints"] = frozenset(endpoints)
    return Faults(**values)


# --- the draw ---------------------------------------------------------------------------


class Outcome(enum.Enum):
    """The exclusive outcome fault a call gets, if any."""

    NONE = enum.auto()
    DROP_BEFORE = enum.auto()
    ERROR_5XX = enum.auto()
    RATE_429 = enum.auto()
    BUSINESS = enum.auto()
    EXPIRE = enum.auto()
    DROP_AFTER = enum.auto()


@dataclass(frozen=True, slots=True)
class Plan:
    """What the fault draw decided for one call."""

    outcome: Outcome = Outcome.NONE
    status: int = 0  # the HTTP status of an ERROR_5XX outcome
    slow: bool = False
    delay: float = 0.0  # seconds to wait before answering (delay_seconds + slow_seconds)
    retry_after: float = 0.0


#: The plan of a call that gets no fault at all.
NO_FAULT: Final = Plan()


class FaultInjector:
    """Holds the faults in force and draws, thread-safely, the :class:`Plan` of each call."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._lock = threading.Lock()
        self._faults = faults if faults is not None else Faults()
        self._rng = random.Random(self._faults.seed)

    @property
    def faults(self) -> Faults:
        """The faults in force; assigning a new Faults also reseeds the RNG from its seed."""
        return self._faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        with self._lock:
            self._faults = value
            self._rng = random.Random(value.seed)

    def plan(self, endpoint: str) -> Plan:
        """Draws the faults for one call of ``endpoint`` ("pre", "put" or "report")."""
        with self._lock:
            f = self._faults
            if endpoint not in f.endpoints:
                return Plan(delay=f.delay_seconds) if f.delay_seconds else NO_FAULT
            is_put = endpoint == "put"
            bands = (
                (Outcome.DROP_BEFORE, f.drop_before),
                (Outcome.ERROR_5XX, f.error_5xx),
                (Outcome.RATE_429, f.rate_429),
                (Outcome.BUSINESS, 0.0 if is_put else f.business_error),
                (Outcome.EXPIRE, f.expire_url if is_put else 0.0),
                (Outcome.DROP_AFTER, f.drop_after),
            )
            draw = self._rng.random()
            outcome, upper = Outcome.NONE, 0.0
            for kind, rate in bands:
                upper += rate
                if draw < upper:
                    outcome = kind
                    break
            status = 0
            if outcome is Outcome.ERROR_5XX:
                status = self._rng.choice((500, 503) if is_put else (500, 502, 503))
            slow = self._rng.random() < f.slow
            delay = f.delay_seconds + (f.slow_seconds if slow else 0.0)
            return Plan(outcome, status, slow, delay, f.retry_after)
