"""The GitHub workflows users get: lint and tests everywhere, Pulumi previews on PRs, deploys on main, image builds."""

from __future__ import annotations

import re
import subprocess
import tomllib
from typing import Any

import pytest
import yaml

from infra.registry import SERVER_REPOSITORY
from tests.infra.harness import REPO

WORKFLOWS = REPO / ".github" / "workflows"


def _load(name: str) -> dict[str, Any]:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as the boolean true.
    workflow["on"] = workflow.pop(True)
    return workflow


def _steps(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def _step_index(job: dict[str, Any], predicate: Any) -> int:
    return next(i for i, step in enumerate(job["steps"]) if predicate(step))


def _all_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path.name, name, job)
        for path in sorted(WORKFLOWS.glob("*.yml"))
        for name, job in _load(path.name)["jobs"].items()
    ]


def test_the_three_workflows_exist() -> None:
    assert sorted(p.name for p in WORKFLOWS.glob("*.y*ml")) == ["ci.yml", "image.yml", "infra.yml"]


@pytest.mark.parametrize(("workflow", "job", "definition"), _all_jobs())
def test_every_action_is_pinned_to_a_release(workflow: str, job: str, definition: dict[str, Any]) -> None:
    for step in definition["steps"]:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+\.\d+(\.\d+)?", step["uses"]), f"{workflow}:{job} {step['uses']}"


@pytest.mark.parametrize(("workflow", "job", "definition"), _all_jobs())
def test_every_job_has_a_timeout(workflow: str, job: str, definition: dict[str, Any]) -> None:
    assert definition["timeout-minutes"] > 0


@pytest.mark.parametrize("name", ["ci.yml", "infra.yml", "image.yml"])
def test_workflows_default_to_read_only_and_escalate_per_job(name: str) -> None:
    workflow = _load(name)
    assert workflow["permissions"] == {"contents": "read"}
    for job in workflow["jobs"].values():
        logs_in = bool(_steps(job, "azure/login"))
        assert (job.get("permissions", {}).get("id-token") == "write") is logs_in, "OIDC only where Azure is used"
        for login in _steps(job, "azure/login"):
            assert set(login["with"]) == {"client-id", "tenant-id", "subscription-id"}, "OIDC, no stored credentials"


def test_ci_lints_and_runs_the_test_command_on_every_pr_and_push() -> None:
    ci = _load("ci.yml")
    assert "pull_request" in ci["on"] and "paths" not in (ci["on"]["pull_request"] or {})
    assert ci["on"]["push"] == {"branches": ["main"]}
    lint = [s.get("run", "") for s in ci["jobs"]["lint"]["steps"]]
    assert any(re.fullmatch(r"uvx ruff@[\d.]+ check \.", run) for run in lint)
    assert any(re.fullmatch(r"uvx ruff@[\d.]+ format --check \.", run) for run in lint)
    assert [s["run"] for s in ci["jobs"]["test"]["steps"] if "run" in s] == ["./dev test"]
    assert (REPO / "dev").is_file()


def test_ci_lints_with_the_locked_ruff() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = next(p["version"] for p in lock["package"] if p["name"] == "ruff")
    lint = " ".join(s.get("run", "") for s in _load("ci.yml")["jobs"]["lint"]["steps"])
    assert set(re.findall(r"ruff@([\d.]+)", lint)) == {locked}


def test_infra_previews_both_stacks_on_pull_requests_and_comments() -> None:
    infra = _load("infra.yml")
    assert "pull_request" in infra["on"]
    preview = infra["jobs"]["preview"]
    assert preview["if"] == "github.event_name == 'pull_request'"
    assert preview["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    assert preview["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    (pulumi,) = _steps(preview, "pulumi/actions")
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["stack-name"] == "${{ matrix.stack }}"
    assert pulumi["with"]["comment-on-pr"] is True


def test_infra_deploys_dev_on_main_then_prod_behind_its_environment() -> None:
    infra = _load("infra.yml")
    assert infra["on"]["push"]["branches"] == ["main"]
    dev, prod = infra["jobs"]["up-dev"], infra["jobs"]["up-prod"]
    assert dev["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert dev["environment"] == "dev"
    assert prod["needs"] == "up-dev"
    assert prod["environment"] == "prod"
    for job, stack in ((dev, "dev"), (prod, "prod")):
        (pulumi,) = _steps(job, "pulumi/actions")
        assert (pulumi["with"]["command"], pulumi["with"]["stack-name"]) == ("up", stack)
        assert "pull-requests" not in job["permissions"]


def test_infra_never_cancels_a_running_deployment() -> None:
    assert _load("infra.yml")["concurrency"]["cancel-in-progress"] is False


@pytest.mark.parametrize("job", ["preview", "up-dev", "up-prod"])
def test_infra_installs_the_program_and_logs_in_before_pulumi_runs(job: str) -> None:
    definition = _load("infra.yml")["jobs"][job]
    pulumi = _step_index(definition, lambda s: s.get("uses", "").startswith("pulumi/actions@"))
    sync = _step_index(definition, lambda s: s.get("run", "").startswith("uv sync"))
    login = _step_index(definition, lambda s: s.get("uses", "").startswith("azure/login@"))
    kubelogin = _step_index(definition, lambda s: s.get("uses", "").startswith("azure/use-kubelogin@"))
    assert max(sync, login, kubelogin) < pulumi
    assert definition["env"]["ARM_CLIENT_ID"] == "${{ vars.AZURE_CLIENT_ID }}"


def test_infra_runs_when_anything_the_program_imports_changes() -> None:
    paths = _load("infra.yml")["on"]["pull_request"]["paths"]
    assert {"infra/**", "stacks/**", "Pulumi*.yaml", "server/config/**", "uv.lock"} <= set(paths)
    assert _load("infra.yml")["on"]["push"]["paths"] == paths


def test_images_are_built_for_both_dockerfiles_and_pushed_on_main_and_tags() -> None:
    image = _load("image.yml")
    assert image["on"]["push"] == {"branches": ["main"], "tags": ["v*"]}
    build = image["jobs"]["build"]
    dockerfiles = {entry["dockerfile"] for entry in build["strategy"]["matrix"]["include"]}
    assert dockerfiles == {"images/Dockerfile.cuda", "images/Dockerfile.cpu"}
    assert all((REPO / path).is_file() for path in dockerfiles)
    (push,) = _steps(build, "docker/build-push-action")
    assert push["with"]["push"] is True
    assert push["with"]["file"] == "${{ matrix.dockerfile }}"
    runs = " ".join(s.get("run", "") for s in build["steps"])
    assert "az acr login" in runs


def test_images_land_in_the_repository_the_deployment_pulls_from() -> None:
    assert _load("image.yml")["env"]["REPOSITORY"] == SERVER_REPOSITORY


def test_releases_reach_prod_only_through_its_environment() -> None:
    promote = _load("image.yml")["jobs"]["promote-prod"]
    assert promote["if"] == "github.ref_type == 'tag'"
    assert promote["environment"] == "prod"
    assert promote["needs"] == "build"
    assert "az acr import" in " ".join(s.get("run", "") for s in promote["steps"])


KUBELOGIN_SCRIPT = REPO / ".github" / "scripts" / "kubelogin-federated-token.sh"


@pytest.mark.parametrize("job", ["preview", "up-dev", "up-prod"])
def test_kubelogin_uses_a_refreshed_federated_token_not_the_cli_login(job: str) -> None:
    # The CLI's OIDC login cannot be refreshed (azure-cli#28708); a rollout awaited for an hour would outlive it.
    definition = _load("infra.yml")["jobs"][job]
    token = _step_index(definition, lambda s: s.get("run", "") == ".github/scripts/kubelogin-federated-token.sh")
    pulumi = _step_index(definition, lambda s: s.get("uses", "").startswith("pulumi/actions@"))
    kubelogin = _step_index(definition, lambda s: s.get("uses", "").startswith("azure/use-kubelogin@"))
    assert kubelogin < token < pulumi
    assert definition["permissions"]["id-token"] == "write"


def test_the_token_script_switches_kubelogin_and_refreshes_in_the_background() -> None:
    script = KUBELOGIN_SCRIPT.read_text()
    assert KUBELOGIN_SCRIPT.stat().st_mode & 0o111, "executable"
    subprocess.run(["bash", "-n", str(KUBELOGIN_SCRIPT)], check=True)
    assert 'echo "AAD_LOGIN_METHOD=workloadidentity"' in script
    assert 'echo "AZURE_FEDERATED_TOKEN_FILE=$token_file"' in script
    assert "audience=api://AzureADTokenExchange" in script
    refresh = int(re.search(r"refresh_seconds=(\d+)", script).group(1))
    assert refresh < 300, "GitHub's ID tokens live about five minutes"
    assert re.search(r"\(while sleep \"\$refresh_seconds\"; do fetch .*\) \\\n.*&$", script, re.MULTILINE)


@pytest.mark.parametrize(("job", "stack"), [("up-dev", "dev"), ("up-prod", "prod")])
def test_deploys_import_the_repositorys_dashboard_after_up_with_a_fresh_login(job: str, stack: str) -> None:
    definition = _load("infra.yml")["jobs"][job]
    pulumi = _step_index(definition, lambda s: s.get("uses", "").startswith("pulumi/actions@"))
    dashboard = _step_index(definition, lambda s: "az grafana dashboard import" in s.get("run", ""))
    logins = [i for i, s in enumerate(definition["steps"]) if s.get("uses", "").startswith("azure/login@")]
    assert pulumi < logins[-1] < dashboard
    run = definition["steps"][dashboard]["run"]
    assert "infra/dashboards/ggufstack-server.json" in run and f"grafanaName -s {stack}" in run
