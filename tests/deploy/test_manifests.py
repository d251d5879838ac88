"""The deploy/ artefacts, validated offline: real schema validators, then what they must say.

- Kubernetes: every document against the 1.37 OpenAPI schemas (``kubernetes-validate``,
  strict: unknown fields fail), then the properties docs/scale-out.md asks for.
- Nomad: parsed as HCL2 (``python-hcl2``), then the job types and discovery.
- Swarm: the stack file through the Docker CLI's own compose loader and schema
  (``docker stack config``: unknown keys fail), then the modes, networks and mounts.

Every ``CINCH_*`` variable any artefact sets must be a real setting (``api._config``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import kubernetes_validate
import pytest
import yaml

from api._config import describe

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.37.0"
SETTINGS = {name for name, _, _ in describe()}


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_kubernetes_documents_pass_the_schema() -> None:
    docs = k8s_documents()
    assert {d["kind"] for d in docs} >= {
        "Namespace",
        "DaemonSet",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_schema_check_is_real() -> None:
    bad = one(k8s_documents(), "DaemonSet", "cinch-agent")
    bad = {**bad, "spec": {**bad["spec"], "replicas": 3}}  # a DaemonSet has none
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kubernetes_shape() -> None:
    docs = k8s_documents()
    agent = one(docs, "DaemonSet", "cinch-agent")
    api = one(docs, "Deployment", "cinch-api")
    headless = one(docs, "Service", "cinch-agent")
    policy = one(docs, "NetworkPolicy", "cinch-agent-only-from-api")
    pdb = one(docs, "PodDisruptionBudget", "cinch-api")
    agent_labels = agent["spec"]["template"]["metadata"]["labels"]
    api_labels = api["spec"]["template"]["metadata"]["labels"]
    # The agent: its node's docker socket, on tainted sandbox nodes.
    pod = agent["spec"]["template"]["spec"]
    assert {"path": "/var/run/docker.sock", "type": "Socket"} in [
        v.get("hostPath") for v in pod["volumes"]
    ]
    assert pod["tolerations"][0]["effect"] == "NoSchedule"
    (agent_c,) = pod["containers"]
    assert agent_c["args"] == ["agent"]
    port = agent_c["ports"][0]["containerPort"]
    # Discovery: a headless Service over the agents, named in the API's CINCH_AGENTS_DNS.
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= agent_labels.items()
    (api_c,) = api["spec"]["template"]["spec"]["containers"]
    api_env = env_of(api_c)
    assert api_env["CINCH_AGENTS_DNS"] == f"cinch-agent.cinch.svc.cluster.local:{port}"
    assert "secretKeyRef" in api_env["CINCH_DATABASE_URL"]
    assert "CINCH_DATABASE_URL" not in env_of(agent_c)  # no database credentials on agents
    # Only the API reaches the agents' port; the agents reach nothing.
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= agent_labels.items()
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= api_labels.items()
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]
    assert policy["spec"]["egress"] == []
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # The API stays available through voluntary disruptions.
    assert pdb["spec"]["selector"]["matchLabels"].items() <= api_labels.items()
    assert pdb["spec"]["minAvailable"] >= 1
    assert api["spec"]["replicas"] > pdb["spec"]["minAvailable"]
    for c in (agent_c, api_c):
        unknown = {n for n in env_of(c) if n.startswith("CINCH_")} - SETTINGS
        assert not unknown, unknown


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if k != "__is_block__"}
    return value


def nomad_job(name: str) -> dict[str, Any]:
    parsed = _unquote(hcl2.loads((DEPLOY / "nomad" / f"{name}.nomad.hcl").read_text()))
    (job,) = parsed["job"]
    return dict(job[name])


def test_nomad_jobs_parse_and_have_the_right_types() -> None:
    agent = nomad_job("cinch-agent")
    api = nomad_job("cinch-api")
    assert agent["type"] == "system"
    assert api["type"] == "service"
    (agent_group,) = agent["group"]
    (api_group,) = api["group"]
    (task,) = agent_group["agent"]["task"]
    config = task["agent"]["config"][0]
    assert config["network_mode"] == "host"
    assert "/var/run/docker.sock:/var/run/docker.sock" in config["volumes"]
    assert api_group["api"]["count"] >= 2
    (api_task,) = api_group["api"]["task"]
    env = api_task["api"]["env"][0]
    assert env["CINCH_AGENTS_DNS"].startswith("cinch-agent.service.consul:")
    for t in (task["agent"], api_task["api"]):
        unknown = {n for n in t["env"][0] if n.startswith("CINCH_")} - SETTINGS
        assert not unknown, unknown


def swarm_stack() -> dict[str, Any]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.fail("the docker CLI is needed to validate the stack file")
    env = {
        **os.environ,
        "CINCH_IMAGE": "cinch/runtime:test",
        "CINCH_AGENT_TOKEN": "t",
        "POSTGRES_PASSWORD": "p",
        "CINCH_AGENTS": "198.18.0.11:8081",
    }
    result = subprocess.run(
        [docker, "stack", "config", "-c", str(DEPLOY / "swarm" / "stack.yml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_swarm_stack_passes_the_compose_schema_and_has_the_shape() -> None:
    stack = swarm_stack()
    agent, api, db = (stack["services"][n] for n in ("agent", "api", "postgres"))
    assert agent["deploy"]["mode"] == "global"
    assert agent["deploy"]["update_config"]["order"] == "stop-first"
    assert list(agent["networks"]) == ["hostnet"]
    assert stack["networks"]["hostnet"] == {"external": True, "name": "host"}
    assert "/var/run/docker.sock" in {v["source"] for v in agent["volumes"]}
    assert api["deploy"]["replicas"] >= 2
    assert "CINCH_DATABASE_URL" not in agent["environment"]
    assert "db" in api["networks"]
    assert "db" in db["networks"]
    assert "db" not in agent["networks"]
    # A rolling update waits for each new agent to answer; PostgreSQL gets its fast shutdown.
    assert "/healthz" in " ".join(agent["healthcheck"]["test"])
    assert db["stop_signal"] == "SIGINT"
    for service in (agent, api):
        unknown = {n for n in service["environment"] if n.startswith("CINCH_")} - SETTINGS
        assert not unknown, unknown


def test_swarm_deploy_script_parses() -> None:
    script = DEPLOY / "swarm" / "deploy"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
