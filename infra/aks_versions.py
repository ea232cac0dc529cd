"""The Kubernetes minors AKS supports, and until when: the calendar the stack's version is checked against.

From "Supported Kubernetes versions in Azure Kubernetes Service (AKS)", AKS Kubernetes release calendar
(https://learn.microsoft.com/azure/aks/supported-kubernetes-versions). A month there means its last day for end of
life; GA is taken as the first day of its month. The Free and Standard tiers have no long-term support, so a minor
past its end of life is refused outright. Add each new minor when AKS publishes it; a test fails once the default's
end of life has passed.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Minor:
    version: str
    ga: date
    end_of_life: date


def _month_end(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])


CALENDAR: tuple[Minor, ...] = (
    Minor("1.33", date(2025, 6, 1), _month_end(2026, 7)),
    Minor("1.34", date(2025, 11, 1), _month_end(2026, 11)),
    Minor("1.35", date(2026, 3, 1), _month_end(2027, 3)),
    Minor("1.36", date(2026, 6, 1), _month_end(2027, 6)),
    Minor("1.37", date(2026, 10, 1), _month_end(2027, 10)),
)
# Not the newest minor (its add-ons are the least proven) and not the one whose support ends next.
DEFAULT = "1.36"


def supported(on: date) -> list[Minor]:
    """The minors generally available and not past their end of life on `on`."""
    return [m for m in CALENDAR if m.ga <= on <= m.end_of_life]


def minor_of(version: str) -> str:
    """`1.36` for `1.36` or `1.36.2`."""
    return ".".join(version.split(".")[:2])
