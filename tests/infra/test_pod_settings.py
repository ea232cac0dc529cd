"""The server's settings reach the pod under the server's own names, in an order only the server decides."""

from __future__ import annotations

import pytest

from infra import pod_settings
from server.config.settings import Settings
from tests.infra.harness import StackRun


def _env_names(stack: StackRun) -> list[str]:
    (deployment,) = [
        obj
        for _, obj in stack.kubernetes_objects()
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "ggufstack-server"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return [e["name"] for e in container["env"]]


def test_the_environment_follows_the_order_settings_declares(stack: StackRun) -> None:
    declared = [Settings.env_name(field) for field in Settings.model_fields]
    names = _env_names(stack)
    assert names == sorted(names, key=declared.index)


def test_a_setting_the_server_does_not_have_fails_the_program_before_any_value_is_known() -> None:
    with pytest.raises(KeyError, match="context_size"):
        pod_settings.environment({"context_size": 4096}, layout={})


def test_a_secret_setting_is_refused_in_the_environment() -> None:
    with pytest.raises(ValueError, match="GGUFSTACK_DATABASE_URL is a secret"):
        pod_settings.environment({"database_url": "postgresql://u:p@h/db"}, layout={})


def test_a_stack_cannot_override_the_pods_layout() -> None:
    with pytest.raises(ValueError, match="port: set by the pod's layout"):
        pod_settings.environment({"port": 8080}, layout={"port": 8000})
