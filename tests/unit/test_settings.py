"""The settings tree: serve_config.yaml validates into it, and its replica options agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from core.service.settings import AppArgs, DeploymentOptions, Deployments, EmbedderArgs

REPO = Path(__file__).resolve().parents[2]


def _app() -> dict:
    return yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]


def test_serve_config_args_validate_into_one_typed_tree() -> None:
    cfg = AppArgs.model_validate(_app()["args"])
    assert isinstance(cfg.embedder, EmbedderArgs) and cfg.embedder.backend == "static"
    assert cfg.deployments == Deployments()


def test_yaml_replica_options_state_what_the_graph_builder_applies() -> None:
    """serve_config.yaml's `deployments:` override the builder's options at deploy time; every
    number they state must be the settings tree's, so code and YAML never disagree."""
    tree = Deployments()
    by_name = {
        "Ingress": tree.ingress,
        "Embedder": tree.embedder,
        "Router": tree.router,
        "Feedback": tree.feedback,
        "Registry": tree.registry,
    }
    entries = _app()["deployments"]
    assert {e["name"] for e in entries} >= set(by_name)
    for entry in entries:
        name = entry["name"]
        opts = tree.provider if name.startswith("Provider_") else by_name[name]
        applied = opts.serve_options()
        for key, value in entry.items():
            if key != "name":
                assert applied[key] == value, f"{name}.{key}: YAML {value} != tree {applied[key]}"


def test_deployment_options_need_exactly_one_scaling_mode_and_one_router() -> None:
    with pytest.raises(ValidationError, match="either num_replicas or autoscaling"):
        DeploymentOptions(num_cpus=0.1, max_ongoing_requests=8)
    with pytest.raises(ValidationError, match="num_replicas must be 1"):
        Deployments(router={"num_cpus": 0.25, "max_ongoing_requests": 8, "num_replicas": 2})
    fixed = DeploymentOptions(num_cpus=0.5, max_ongoing_requests=8, num_replicas=3)
    assert fixed.serve_options() == {
        "ray_actor_options": {"num_cpus": 0.5},
        "max_ongoing_requests": 8,
        "logging_config": {"enable_access_log": False},  # an inner hop: no access log line
        "num_replicas": 3,
        "autoscaling_config": None,
    }
    tree = Deployments()  # the Ingress's access log is the request log
    assert tree.ingress.serve_options()["logging_config"] == {"enable_access_log": True}
    assert not tree.router.access_log and not tree.embedder.access_log


@pytest.mark.parametrize(
    "dsn", ["postgresql://ps:secret@db.internal:5432/paretoserve", "postgres://ps@10.0.0.5/ps"]
)
def test_a_postgresql_state_path_is_kept_as_given(dsn: str, tmp_path: Path) -> None:
    """A DSN selects the PostgreSQL store (core/state/open_store.py): it is not a path to
    resolve against the project home, while a file path still is."""
    args = _app()["args"]
    cfg = AppArgs.model_validate({**args, "state_path": dsn}).resolved(tmp_path)
    assert cfg.state_path == dsn and cfg.router_settings().state_path == dsn
    relative = AppArgs.model_validate({**args, "state_path": "var/s.db"}).resolved(tmp_path)
    assert relative.state_path == str(tmp_path.resolve() / "var" / "s.db")
