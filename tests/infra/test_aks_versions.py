"""The Kubernetes version: a minor AKS supports today, from the calendar in infra/aks_versions.py.

Source: "Supported Kubernetes versions in Azure Kubernetes Service (AKS)", AKS Kubernetes release calendar,
https://learn.microsoft.com/azure/aks/supported-kubernetes-versions (1.33 ends July 2026, 1.34 November 2026; the
Free and Standard tiers have no long-term support).
"""

from __future__ import annotations

from datetime import date

import pytest

from infra import aks_versions
from infra.config import StackConfig, parse
from tests.infra.test_config import VALID, _error


def test_the_default_minor_is_supported_on_the_date_of_the_run() -> None:
    """Fails on the day the default's end of life passes: time to move the default (and the stacks) on."""
    default = StackConfig.model_fields["kubernetes_version"].default
    assert default in [m.version for m in aks_versions.supported(date.today())]


def test_a_minor_past_its_end_of_life_is_refused() -> None:
    """1.34 ended in November 2026 (AKS calendar); the config accepted anything from 1.31 to 1.37."""
    for minor in aks_versions.CALENDAR:
        if minor.end_of_life < date.today():
            message = _error(kubernetesVersion=minor.version)
            assert f"'{minor.version}' is not a supported Kubernetes version" in message
            assert "AKS's supported minors on" in message


def test_a_patch_of_a_supported_minor_is_accepted() -> None:
    minor = aks_versions.supported(date.today())[-1].version
    assert parse({**VALID, "kubernetesVersion": f"{minor}.2"}).kubernetes_version == f"{minor}.2"


@pytest.mark.parametrize("on", [date(2026, 7, 31), date(2026, 8, 1)])
def test_end_of_life_is_the_last_day_of_its_month(on: date) -> None:
    assert ("1.33" in [m.version for m in aks_versions.supported(on)]) is (on.month == 7)


def test_the_calendar_is_in_order_and_each_minor_lives_about_a_year() -> None:
    for earlier, later in zip(aks_versions.CALENDAR, aks_versions.CALENDAR[1:], strict=False):
        assert earlier.ga < later.ga and earlier.end_of_life < later.end_of_life
    for minor in aks_versions.CALENDAR:
        assert 360 <= (minor.end_of_life - minor.ga).days <= 430, minor.version
