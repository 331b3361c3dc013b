"""deploy/kubernetes: valid against the Kubernetes schemas, and every setting and command exists.

No cluster runs here, so the manifests are checked offline: strict schema validation with the
schemas that ship in the `kubernetes-validate` package, every ``MNISTOPS_*`` key they pass is a
field of :class:`~mnistops.settings.Settings`, and every container's ``args`` is a command of the
`mnistops` CLI whose options exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from mnistops.cli import app
from mnistops.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
DOCS = [(p.name, d) for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []))


def test_every_role_has_a_deployment() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    for role in ("serve", "monitor", "controller", "worker"):
        assert ("Deployment", f"mnistops-{role}") in kinds
    assert {"ConfigMap", "Secret", "Service"} <= {k for k, _ in kinds}


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[f"{n}:{d['kind']}" for n, d in DOCS])
def test_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_every_setting_passed_exists() -> None:
    fields = {f"MNISTOPS_{f.upper()}" for f in Settings.model_fields}
    passed = {k for _, d in DOCS if d["kind"] in ("ConfigMap", "Secret") for k in d.get("data") or {}}
    passed |= {k for _, d in DOCS if d["kind"] == "Secret" for k in d.get("stringData") or {}}
    assert passed and passed <= fields, sorted(passed - fields)
    for _, d in DOCS:
        for c in _containers(d):
            env = {e["name"] for e in c.get("env", []) if e["name"].startswith("MNISTOPS_")}
            assert env <= fields, sorted(env - fields)
    Settings(
        **{k.removeprefix("MNISTOPS_").lower(): v for _, d in DOCS for k, v in (d.get("data") or {}).items()}
    )


def _resolve(args: list[str]) -> tuple[Any, list[str]]:
    # typer vendors its own click: groups are recognised by their ``commands`` mapping
    cmd: Any = typer.main.get_command(app)
    rest = list(args)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        sub = cmd.commands.get(rest[0])
        assert sub is not None, f"no command {rest[0]!r} in {args}"
        cmd, rest = sub, rest[1:]
    return cmd, rest


def test_every_command_run_exists() -> None:
    seen = set()
    for _, d in DOCS:
        for c in _containers(d):
            cmd, rest = _resolve(c["args"])
            assert not hasattr(cmd, "commands"), f"{c['args']} names a group, not a command"
            seen.add(" ".join(c["args"][: len(c["args"]) - len(rest)]))
            cmd.make_context("mnistops", rest)  # unknown options or arguments raise here
    assert seen == {"serve", "monitor run", "controller run", "worker run"}


def test_probes_and_scrape_annotations() -> None:
    for _, d in DOCS:
        if d["kind"] != "Deployment":
            continue
        tpl = d["spec"]["template"]
        ann = tpl["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
        for c in _containers(d):
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert int(ann["prometheus.io/port"]) in ports.values()
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
