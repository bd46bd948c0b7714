"""Kubernetes resource quantities ("512Mi", "1G", "250m") as numbers."""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(
    r"([+]?[0-9]+(?:\.[0-9]*)?|[+]?\.[0-9]+)(?:[eE]([+-]?[0-9]{1,3}))?([a-zA-Z]*)"
)
#: Larger amounts are refused: no resource is that large, and arithmetic on a number of
#: a million digits (1e999999 matches the pattern) would stall the webhook.
MAXIMUM = Decimal(2) ** 63


def parse(quantity: str) -> Decimal:
    """The value of ``quantity``; ValueError if it is not a non-negative quantity of at
    most ``MAXIMUM``."""
    match = _QUANTITY.fullmatch(quantity.strip())
    if match is None or match.group(3) not in _SUFFIX:
        raise ValueError(f"{quantity!r:.60} is not a resource quantity (e.g. 512Mi, 1G, 250m)")
    number, exponent, suffix = match.groups()
    if exponent is not None and suffix:
        raise ValueError(f"{quantity!r} is not a resource quantity: an exponent and a suffix")
    try:
        value = Decimal(number).scaleb(int(exponent or 0)) * _SUFFIX[suffix]
    except ArithmeticError as exc:
        raise ValueError(f"{quantity!r} is not a resource quantity") from exc
    if value > MAXIMUM:
        raise ValueError(f"{quantity!r} is too large a resource quantity")
    return value
