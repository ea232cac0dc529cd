"""The Kubernetes objects the program declares, written out as YAML and run through real validators.

kubernetes-validate checks every built-in object against the OpenAPI schema of the stack's own Kubernetes version,
in strict mode (unknown fields are errors). checkov runs its Kubernetes policies over the same files; a check may
only be skipped by an annotation on the object that says why (see infra/workload.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.infra.harness import REPO, StackRun

CHECKOV = "checkov==3.3.30"
# Custom resources have no schema in kubernetes-validate; these are the only ones the program may declare.
CUSTOM_KINDS = {
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"),
    ("azmonitoring.coreos.com/v1", "PodMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}


@pytest.fixture(scope="session")
def manifests(dev: StackRun, prod: StackRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifests")
    for run in (dev, prod):
        directory = root / run.stack
        directory.mkdir()
        for _, obj in run.kubernetes_objects():
            name = f"{obj['kind']}-{obj['metadata'].get('namespace', 'cluster')}-{obj['metadata']['name']}.yaml"
            (directory / name).write_text(yaml.safe_dump(obj, sort_keys=False))
    return root


def _objects(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, yaml.safe_load(path.read_text())) for path in sorted(directory.glob("*.yaml"))]


def test_manifests_are_written_for_both_stacks(manifests: Path) -> None:
    for stack in ("dev", "prod"):
        kinds = {obj["kind"] for _, obj in _objects(manifests / stack)}
        assert {"Namespace", "DaemonSet", "ServiceAccount", "Deployment", "Service"} <= kinds
        assert {"ScaledObject", "PodDisruptionBudget", "NetworkPolicy", "SecretProviderClass", "PodMonitor"} <= kinds
        assert {"Gateway", "HTTPRoute"} <= kinds


@pytest.mark.parametrize("stack_name", ["dev", "prod"])
def test_manifests_pass_kubernetes_validate_strict(
    request: pytest.FixtureRequest, manifests: Path, stack_name: str
) -> None:
    version = request.getfixturevalue(stack_name).cfg.kubernetes_version
    for name, obj in _objects(manifests / stack_name):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{stack_name}/{name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_strict_validation_catches_a_misspelt_field(manifests: Path, dev: StackRun) -> None:
    (deployment,) = [
        obj
        for _, obj in _objects(manifests / "dev")
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "ggufstack-server"
    ]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, dev.cfg.kubernetes_version, strict=True)


# CRD schemas from the @kubernetes-models npm packages (package.json): type, enum, pattern and required-field checks,
# though not unknown-field checks. The other custom kinds stay asserted field by field in their own tests.
CRD_VALIDATOR = REPO / "tests" / "support" / "validate_custom_resources.cjs"
CRD_SCHEMA_KINDS = CUSTOM_KINDS - {
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"),
    ("azmonitoring.coreos.com/v1", "PodMonitor"),
}


def _crd_problems(objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    node = shutil.which("node")
    assert node, "node comes with ./dev test (it runs Azurite)"
    result = subprocess.run(
        [node, str(CRD_VALIDATOR)], input=json.dumps(objects), capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_gateway_api_and_keda_objects_validate_against_their_crd_schemas(manifests: Path) -> None:
    objects = [
        obj
        for stack in ("dev", "prod")
        for _, obj in _objects(manifests / stack)
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMA_KINDS
    ]
    assert {obj["kind"] for obj in objects} == {kind for _, kind in CRD_SCHEMA_KINDS}
    assert _crd_problems(objects) == []


def test_crd_validation_catches_a_malformed_field(manifests: Path) -> None:
    (route,) = [obj for _, obj in _objects(manifests / "dev") if obj["kind"] == "HTTPRoute"]
    route["spec"]["rules"][0]["timeouts"] = {"request": "an hour"}
    (problem,) = _crd_problems([route])
    assert "timeouts/request" in problem["error"]


@pytest.fixture(scope="session")
def checkov_report(manifests: Path) -> dict[str, Any]:
    uvx = shutil.which("uvx")
    if uvx is None:
        pytest.skip("uvx is not installed; checkov runs in its own environment through it")
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    command = [uvx, "--from", CHECKOV, "checkov", "-d", str(manifests), "--framework", "kubernetes"]
    command += ["--skip-download", "--compact", "--quiet", "--output", "json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode in (0, 1), f"checkov did not run: {result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def _skip_annotations(manifests: Path) -> int:
    return sum(
        key.startswith("checkov.io/skip")
        for stack in ("dev", "prod")
        for _, obj in _objects(manifests / stack)
        for key in obj["metadata"].get("annotations", {})
    )


def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['file_path']})" for c in checkov_report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)


def test_checkov_parsed_every_object_and_skipped_only_what_is_annotated(
    checkov_report: dict[str, Any], manifests: Path
) -> None:
    summary = checkov_report["summary"]
    assert summary["parsing_errors"] == 0
    # checkov also counts the pod template inside each workload as a resource of its own.
    assert summary["resource_count"] >= len(list(manifests.rglob("*.yaml")))
    assert summary["passed"] > 100
    assert summary["skipped"] == _skip_annotations(manifests)
