"""Monitoring that collects: Container Insights' rule, managed Prometheus scraping the server, Grafana, alerts and
Application Insights; and the dashboard, alerts and autoscaler query naming only metrics the server exports."""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest
from prometheus_client.metrics import MetricWrapperBase

from infra.server_metrics import (
    DASHBOARD_FILE,
    JOB,
    alert_rules,
    dashboard,
    dashboard_json,
    expressions,
    model_variable,
    scale_query,
)
from server.engine.base import EngineStats
from server.telemetry import prometheus
from server.telemetry.prometheus import GENERATIONS_WAITING, MODEL_LABEL, SLOTS_BUSY, exported_names
from tests.infra.harness import StackRun

METRIC = re.compile(r"\b(ggufstack_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(ggufstack_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)")
BY = re.compile(r"\bby \(([^)]*)\)")
# Labels the scrape adds to every series (the PodMonitor's job, the pod's own).
SCRAPE_LABELS = {"job", "pod", "namespace", "instance", "container"}
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_sum", "_count", "_created"), "info": ("_info",)}


def _exported_labels() -> dict[str, set[str]]:
    """Each sample name the server exports, with the label names its series carry."""
    labels: dict[str, set[str]] = {}
    for metric in vars(prometheus).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        own = set(metric._labelnames)
        for suffix in _SUFFIXES.get(metric._type, ("",)):
            labels[metric._name + suffix] = own
        if metric._type == "histogram":
            labels[f"{metric._name}_bucket"] = {*own, "le"}
    empty = EngineStats(0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0)
    engine = prometheus.EngineCollector(lambda: {"m": empty}, lambda: {"m": 0}, lambda: 0)
    for family in engine.collect():
        for sample in family.samples:
            labels[sample.name] = set(sample.labels)
    return labels


def _k8s(stack: StackRun, kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in stack.kubernetes_objects() if obj["kind"] == kind]


def test_container_insights_has_its_rule_and_association_on_the_cluster(stack: StackRun) -> None:
    cluster = stack.managed_cluster()
    workspace = stack.one("azure-native:operationalinsights:Workspace").id
    rule = next(
        r
        for r in stack.of_type("azure-native:monitor:DataCollectionRule")
        if "dataSources" in r.plain and "extensions" in r.plain["dataSources"]
    )
    (extension,) = rule.plain["dataSources"]["extensions"]
    assert (extension["extensionName"], extension["streams"]) == (
        "ContainerInsights",
        ["Microsoft-ContainerInsights-Group-Default"],
    )
    (destination,) = rule.plain["destinations"]["logAnalytics"]
    assert destination["workspaceResourceId"] == workspace
    assert rule.plain["dataFlows"] == [
        {"streams": ["Microsoft-ContainerInsights-Group-Default"], "destinations": [destination["name"]]}
    ]
    association = stack.one("azure-native:monitor:DataCollectionRuleAssociation", "container-insights-association")
    assert association.plain["associationName"] == "ContainerInsightsExtension"
    assert (association.plain["resourceUri"], association.plain["dataCollectionRuleId"]) == (cluster.id, rule.id)
    assert cluster.plain["addonProfiles"]["omsagent"]["config"]["useAADAuth"] == "true"


def test_managed_prometheus_writes_to_the_workspace_through_rules_associated_with_the_cluster(
    stack: StackRun,
) -> None:
    cluster = stack.managed_cluster().id
    workspace = stack.one("azure-native:monitor:AzureMonitorWorkspace").id
    endpoint = stack.one("azure-native:monitor:DataCollectionEndpoint").id
    rule = stack.one("azure-native:monitor:DataCollectionRule", "prometheus-rule")
    assert rule.plain["dataCollectionEndpointId"] == endpoint
    assert rule.plain["destinations"]["monitoringAccounts"][0]["accountResourceId"] == workspace
    assert rule.plain["dataSources"]["prometheusForwarder"][0]["streams"] == ["Microsoft-PrometheusMetrics"]
    associations = {
        r.plain["associationName"]: r.plain for r in stack.of_type("azure-native:monitor:DataCollectionRuleAssociation")
    }
    assert associations["ContainerInsightsMetricsExtension"]["dataCollectionRuleId"] == rule.id
    assert associations["configurationAccessEndpoint"]["dataCollectionEndpointId"] == endpoint
    assert all(a["resourceUri"] == cluster for a in associations.values())


def test_grafana_reads_the_workspace_with_its_own_identity(stack: StackRun) -> None:
    grafana = stack.one("azure-native:dashboard:Grafana")
    workspace = stack.one("azure-native:monitor:AzureMonitorWorkspace").id
    integrations = grafana.plain["properties"]["grafanaIntegrations"]["azureMonitorWorkspaceIntegrations"]
    assert integrations == [{"azureMonitorWorkspaceResourceId": workspace}]
    assert grafana.plain["properties"]["apiKey"] == "Disabled"
    readers = [
        r.plain["principalId"]
        for r in stack.of_type("azure-native:authorization:RoleAssignment")
        if r.plain["scope"] == workspace
    ]
    assert grafana.outputs["identity"]["principalId"] in readers


def test_alert_rules_are_a_prometheus_rule_group_on_the_workspace(stack: StackRun) -> None:
    group = stack.one("azure-native:alertsmanagement:PrometheusRuleGroup").plain
    workspace = stack.one("azure-native:monitor:AzureMonitorWorkspace").id
    assert workspace in group["scopes"]
    assert {r["alert"] for r in group["rules"]} == {
        "GgufstackServerNotReady",
        "GgufstackServer5xxRate",
        "GgufstackServerQueueSaturated",
        "GgufstackServerSlowFirstToken",
        "GgufstackModelLoadsFailing",
        "GgufstackRequestsRefusedAtArrival",
        "GgufstackWaitingAnswersOverBudget",
        "GgufstackRetentionFailing",
    }
    assert [r["expression"] for r in group["rules"]] == [r.expression for r in alert_rules()]


def test_every_metric_the_dashboard_alerts_and_autoscaler_use_is_exported() -> None:
    exported = exported_names()
    used = {name for expression in expressions() for name in METRIC.findall(expression)}
    assert used, "the expressions name metrics"
    assert used <= exported, used - exported
    panels = json.loads(DASHBOARD_FILE.read_text())["panels"]
    in_file = {name for panel in panels for target in panel["targets"] for name in METRIC.findall(target["expr"])}
    assert in_file <= exported, in_file - exported


def test_every_label_an_expression_names_is_one_its_metric_carries() -> None:
    """A selector or a grouping on a label the metric lacks matches nothing, or merges what it meant to split."""
    labels = _exported_labels()
    assert labels[prometheus.GENERATIONS_WAITING] == {MODEL_LABEL}, "the engine's gauges are per model"
    for expression in expressions():
        for name, selector in SELECTOR.findall(expression):
            assert set(MATCHER.findall(selector)) <= labels[name] | SCRAPE_LABELS, (name, expression)
        for grouping in BY.finditer(expression):
            (name,) = METRIC.findall(expression[grouping.end() :])[:1]
            grouped = {label.strip() for label in grouping.group(1).split(",")}
            assert grouped <= labels[name] | SCRAPE_LABELS, (name, expression)
    variable = model_variable()["query"]
    (name,) = METRIC.findall(variable)
    assert variable.endswith(f", {MODEL_LABEL})") and MODEL_LABEL in labels[name]


def test_dashboard_panels_follow_the_model_selector_wherever_the_metric_has_the_label() -> None:
    labels = _exported_labels()
    board = dashboard()
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", MODEL_LABEL]
    assert model_variable()["multi"] and model_variable()["includeAll"]
    filtered = 0
    for panel in board["panels"]:
        for target in panel["targets"]:
            for name, selector in SELECTOR.findall(target["expr"]):
                per_model = MODEL_LABEL in labels[name]
                assert (f'{MODEL_LABEL}=~"$model"' in selector) == per_model, (panel["title"], target["expr"])
                filtered += per_model
    assert filtered >= 10


def test_the_autoscaler_and_the_queue_alert_look_at_each_model() -> None:
    """With several models, a sum over all of them lets one model's idle slots hide another's backlog."""
    assert scale_query().startswith("max(") and scale_query().count(f"sum by ({MODEL_LABEL})") == 2
    rules = {r.name: r.expression for r in alert_rules()}
    assert rules["GgufstackServerQueueSaturated"].count(f"sum by ({MODEL_LABEL})") == 2
    assert f"sum by (le, {MODEL_LABEL})" in rules["GgufstackServerSlowFirstToken"]
    assert 'result="failed"' in rules["GgufstackModelLoadsFailing"]
    assert rules["GgufstackRequestsRefusedAtArrival"].startswith("sum by (code) (rate(ggufstack_http_refused_total{")


def test_every_expression_is_promql_that_prometheus_parses() -> None:
    """The mocks never run a query: an expression Azure's managed Prometheus cannot parse would be an alert rule group
    that `pulumi up` fails to create (or a blank panel, or a KEDA scaler in error). Grafana's own variable query
    (`label_values(...)`) is not PromQL; its selector argument is."""
    for expression in expressions():
        grafana = re.fullmatch(r"label_values\((.*), \w+\)", expression)
        try:
            promql_parser.parse(grafana.group(1) if grafana else expression)
        except ValueError as error:
            raise AssertionError(f"{expression}: {error}") from None
    with pytest.raises(ValueError):  # the parser does refuse what Prometheus refuses
        promql_parser.parse("sum by (code) (rate(ggufstack_http_refused_total[5m])")


def test_every_expression_selects_the_scrape_job() -> None:
    for expression in expressions():
        for selector in re.findall(r"ggufstack_[a-z0-9_]+\{([^}]*)\}", expression):
            assert f'job="{JOB}"' in selector, expression


def test_committed_dashboard_is_the_generated_one() -> None:
    assert DASHBOARD_FILE.read_text() == dashboard_json(), "regenerate it: python -m infra.server_metrics"


def test_dashboard_covers_throughput_latency_queue_errors_and_model_version() -> None:
    titles = {panel["title"] for panel in dashboard()["panels"]}
    assert titles == {
        "Throughput",
        "Time to first token",
        "Time per output token",
        "Queue and slots",
        "Responses by status",
        "Model version by replica",
        "Model memory (largest replica)",
        "Model loads and evictions",
        "Model load time",
    }


def test_scale_query_counts_waiting_and_busy_generations() -> None:
    assert GENERATIONS_WAITING in scale_query() and SLOTS_BUSY in scale_query()


def test_pod_monitor_scrapes_the_servers_metrics_port_as_the_job(stack: StackRun) -> None:
    (monitor,) = _k8s(stack, "PodMonitor")
    (deployment,) = [d for d in _k8s(stack, "Deployment") if d["metadata"]["name"] == "ggufstack-server"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert monitor["apiVersion"] == "azmonitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["relabelings"] == [{"action": "replace", "targetLabel": "job", "replacement": JOB}]
    assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
    assert set(endpoint) == {"port", "path", "interval", "relabelings"}


def test_app_insights_sits_on_the_log_analytics_workspace_and_reaches_the_pod_through_the_vault(
    stack: StackRun,
) -> None:
    component = stack.one("azure-native:applicationinsights:Component")
    workspace = stack.one("azure-native:operationalinsights:Workspace").id
    assert component.plain["workspaceResourceId"] == workspace
    (secret,) = [
        r
        for r in stack.of_type("azure-native:keyvault:Secret")
        if r.plain["secretName"] == "applicationinsights-connection-string"
    ]
    assert secret.plain["properties"]["value"] == component.outputs["connectionString"]
