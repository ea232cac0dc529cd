"""Credentials exist in the program only as Pulumi secrets: encrypted in the state, masked in every preview.

The mock hands out every credential Azure would (generated passwords, the Redis key, the kubeconfig) and remembers
them; no resource input and no stack output may carry one outside Pulumi's secret marker.
"""

from __future__ import annotations

from tests.infra.harness import REDIS_PRIMARY_KEY, StackRun, plaintext_secrets


def test_the_mock_handed_out_credentials_to_look_for(stack: StackRun) -> None:
    # Generated passwords (the admin API key; the PostgreSQL admin's outside production), the Redis key, the kubeconfig
    # marker and the Application Insights connection string.
    assert len(stack.secret_values) == (4 if stack.cfg.production else 5)


def test_no_resource_receives_a_credential_in_plain_text(stack: StackRun) -> None:
    leaks = [
        f"{r.type} {r.name}{path}"
        for r in stack.registrations
        for path in plaintext_secrets(r.inputs, stack.secret_values)
    ]
    assert not leaks, leaks


def test_no_stack_output_carries_a_credential_in_plain_text(stack: StackRun) -> None:
    leaks = [
        key
        for key, output in stack.outputs.items()
        if not output.secret and list(plaintext_secrets(output.value, stack.secret_values))
    ]
    assert not leaks


def test_credentials_do_reach_the_resources_that_need_them(stack: StackRun) -> None:
    # The scan above would pass vacuously if the values never showed up at all.
    seen = {secret for r in stack.registrations for secret in stack.secret_values if secret in repr(r.plain)}
    # Production reads no Redis key: access keys are off there.
    unused = {REDIS_PRIMARY_KEY} if stack.cfg.production else set()
    assert seen == stack.secret_values - unused
