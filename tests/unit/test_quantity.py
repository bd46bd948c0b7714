from __future__ import annotations

from decimal import Decimal

import pytest

from trialsync_operator import quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512Mi", 512 * 2**20),
        ("1G", 10**9),
        ("250m", Decimal("0.25")),
        ("2", 2),
        ("1.5Gi", 3 * 2**29),
        ("1e3", 1000),
        ("100u", Decimal("0.0001")),
        ("5n", Decimal("5e-9")),
    ],
)
def test_quantities_parse_as_kubernetes_reads_them(text: str, value: int | Decimal) -> None:
    assert quantity.parse(text) == value


@pytest.mark.parametrize(
    "text", ["", "lots", "1Qi", "-1", "1e3Mi", "Mi", "1e999999", "9" * 5000, "1\n2"]
)
def test_a_malformed_quantity_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        quantity.parse(text)
