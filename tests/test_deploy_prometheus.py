"""The real Prometheus binary scrapes a live r2m with the shipped scrape job and alert rules, and
every metric the dashboard and the alerts use is really exported.

Only the target discovery changes (Docker DNS → the test server on loopback) and the intervals
shrink to 1 s; the rules file is the shipped one, evaluated against live data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from r2m_service.launch import free_port
from tests.conftest import Server
from tests.deploy_tools import DEPLOY, daemon, run, tool, wait_until
from tests.helpers import PROMPTS, RESPONSES, hidden, wire

D_P = 16
METRIC = re.compile(r"\b(r2m_[a-z0-9_]+)\b")
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$run": ".*"}


def dashboard_exprs() -> dict[str, str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "r2m.json").read_text())
    exprs = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs[f"{panel['title']} / {target['refId']}"] = expr
    return exprs


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


@pytest.fixture(scope="module")
def busy_server(llama_server: Server) -> Server:
    """A live server that has done everything the dashboard shows: runs, scores (cache misses
    and hits), an update, and a failed request, so every histogram and labelled series exists."""
    with httpx.Client(base_url=llama_server.url, timeout=60) as http:
        run = http.post("/v1/runs", json={"policy_hidden_size": D_P, "total_steps": 10,
                                          "learning_rate": 1e-2})
        assert run.status_code == 201, run.text
        run_id = run.json()["run_id"]
        states = [wire(h) for h in hidden([3, 5], D_P)]
        items = [{"prompt": PROMPTS[i], "response": RESPONSES[i], "hidden_states": states[i]}
                 for i in range(2)]
        for _ in range(2):  # the second pass hits the RTE cache
            score = http.post("/v1/score", json={"run_id": run_id, "items": items})
            assert score.status_code == 200, score.text
        update = http.post("/v1/update", json={"run_id": run_id, "groups": [{
            "prompt": PROMPTS[0], "responses": RESPONSES[:2], "hidden_states": states}]})
        assert update.status_code == 200, update.text
        assert http.get("/v1/runs/no-such-run").status_code == 404
    return llama_server


@pytest.fixture(scope="module")
def prometheus(busy_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / rule) for rule in config["rule_files"]]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "r2m")
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [busy_server.url.removeprefix("http://")]}]
    config["scrape_configs"] = [job]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with daemon([binary, f"--config.file={work / 'prometheus.yml'}",
                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                work / "prometheus.log", f"{url}/-/ready", "prometheus to start"):
        yield url


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def test_prometheus_scrapes_the_live_service(prometheus: str) -> None:
    up = wait_until(lambda: query(prometheus, 'up{job="r2m"} == 1'), 20, "up == 1")
    assert len(up) == 1


def test_service_metrics_arrive_in_prometheus(prometheus: str) -> None:
    wait_until(lambda: query(prometheus, 'up{job="r2m"} == 1'), 20, "up == 1")
    runs = query(prometheus, 'r2m_runs{job="r2m"}')
    assert runs and float(runs[0]["value"][1]) >= 1
    versions = query(prometheus, 'r2m_run_version{job="r2m"}')
    assert any(float(v["value"][1]) >= 1 for v in versions)


def test_every_metric_in_the_dashboard_and_alerts_is_exported(busy_server: Server) -> None:
    text = httpx.get(f"{busy_server.url}/metrics", timeout=10).text
    exported = {s.name for family in text_string_to_metric_families(text)
                for s in family.samples}
    used = {m: where for where, expr in {**dashboard_exprs(), **alert_exprs()}.items()
            for m in METRIC.findall(expr)}
    missing = {m: where for m, where in used.items() if m not in exported}
    assert not missing, f"used but not exported: {missing}"


def test_every_dashboard_query_returns_data(prometheus: str) -> None:
    """Each panel's PromQL parses and, once two scrapes have landed, has series to draw."""
    wait_until(lambda: query(prometheus, 'count_over_time(up{job="r2m"}[1m]) >= 3'), 30,
               "three scrapes")
    empty = {where: expr for where, expr in dashboard_exprs().items()
             if not query(prometheus, expr)}
    assert not empty, f"panels without data: {empty}"


def test_alert_rules_evaluate_cleanly_against_live_data(prometheus: str) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = rules and all(r["health"] != "unknown" for r in rules)
        return rules if done else None

    rules = wait_until(evaluated, 30, "every alert rule to be evaluated")
    assert {r["name"] for r in rules} == set(alert_exprs())
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken
    firing = {r["name"] for r in rules if r["state"] == "firing"}
    assert "R2MDown" not in firing and "R2MAbsent" not in firing


def _rules() -> dict[str, dict[str, Any]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"]}


def _alert(name: str, run: str, summary: str) -> dict[str, Any]:
    return {"exp_labels": {"severity": _rules()[name]["labels"]["severity"],
                           "instance": "r2m:8000", "run": run},
            "exp_annotations": {"summary": summary,
                                "description": _rules()[name]["annotations"]["description"]}}


def test_reward_health_alerts_fire_on_the_runs_that_need_them(tmp_path) -> None:
    """`promtool test rules` on synthetic per-run series: the feedback-dominance and scale-drift
    alerts fire after their `for:` on the runs past the threshold, and never on the healthy ones
    (a spread that shrinks as the policy converges is healthy)."""
    def series(metric: str, run: str, values: str) -> dict[str, str]:
        return {"series": f'{metric}{{instance="r2m:8000", job="r2m", run="{run}"}}',
                "values": values}

    share, drift = "r2m_run_feedback_share", "r2m_run_reward_scale_drift"
    test = {
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                series(share, "collapsing", "0.1 0.8x20"), series(share, "healthy", "0.3x20"),
                series(drift, "growing", "1 1.5 5x20"), series(drift, "shrinking", "1 0.2x20"),
                series(drift, "steady", "1 2.5x20"),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "R2MFeedbackBranchDominates", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "R2MFeedbackBranchDominates", "exp_alerts": [
                    _alert("R2MFeedbackBranchDominates", "collapsing",
                           "run collapsing: the policy-feedback branch carries 80% of the "
                           "reward variance")]},
                {"eval_time": "15m", "alertname": "R2MRewardScaleDrift", "exp_alerts": [
                    _alert("R2MRewardScaleDrift", "growing",
                           "run growing: reward std is 5.00× its first scored step's")]},
            ],
        }],
    }
    path = tmp_path / "reward_health_test.yml"
    path.write_text(yaml.safe_dump(test, allow_unicode=True))
    result = run(tool("promtool"), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
