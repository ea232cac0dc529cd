"""Each stack's program runs once per session, with the config of its real stack file; tests assert on the record."""

from __future__ import annotations

import pytest

from tests.infra.harness import StackRun, run_program, stack_config


@pytest.fixture(scope="session")
def dev() -> StackRun:
    return run_program("dev", stack_config("dev"))


@pytest.fixture(scope="session")
def prod() -> StackRun:
    return run_program("prod", stack_config("prod"))


@pytest.fixture(scope="session", params=["dev", "prod"])
def stack(request: pytest.FixtureRequest) -> StackRun:
    return request.getfixturevalue(request.param)
