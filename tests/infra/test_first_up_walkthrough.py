"""The first-`pulumi up` walkthrough (docs/infrastructure.md): every manual step, in order, with why it is manual."""

from __future__ import annotations

import re

from tests.infra.harness import REPO


def _first_up() -> str:
    page = (REPO / "docs" / "infrastructure.md").read_text()
    return page.split("## First `pulumi up`", 1)[1].split("\n## ", 1)[0]


def _steps(section: str) -> list[str]:
    return re.findall(r"^\d+\. \*\*([^*]+)\*\*", section, flags=re.MULTILINE)


def test_manual_steps_are_listed_in_the_order_they_must_happen() -> None:
    assert _steps(_first_up()) == [
        "Tools",
        "Subscription and login",
        "Providers and quota",
        "State backend",
        "Stack and config",
        "First `up`, without waiting for the rollout",
        "Image",
        "Model",
        "Certificate",
        "Restart KEDA once",
        "Second `up`, awaited",
        "DNS",
    ]


def test_the_bootstrap_path_skips_the_rollout_await_and_then_turns_it_back_on() -> None:
    section = _first_up()
    assert "pulumi config set skipRolloutAwait true && pulumi up" in section
    assert "pulumi config rm skipRolloutAwait && pulumi up" in section


def test_keda_restart_is_an_unconditional_step_not_a_hint() -> None:
    """The KEDA add-on starts before its federated credential exists on every first deployment ("Kubernetes
    Event-driven Autoscaling (KEDA) add-on with workload identity", https://learn.microsoft.com/azure/aks/keda-workload-identity):
    the README said to restart it only "if KEDA started before its federated credential existed"."""
    readme = (REPO / "docs" / "infrastructure.md").read_text()
    assert "If KEDA started before" not in readme
    assert "kubectl -n kube-system rollout restart deployment keda-operator" in _first_up()


def test_no_step_enables_what_the_stack_now_declares() -> None:
    readme = (REPO / "docs" / "infrastructure.md").read_text()
    assert "az aks approuting gateway istio enable" not in readme
    assert "--enable-gateway-api" not in readme
