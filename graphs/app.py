"""The application builder: binds the deployments into the graph from typed `args`.

serve run serve_config.yaml          (import_path: graphs.app:build_app)
"""

from __future__ import annotations

import os
from pathlib import Path

from ray.serve import Application

from core.service.settings import AppArgs, ProviderSettings
from core.state.open_store import is_dsn
from deployments.embedder import Embedder
from deployments.feedback import FeedbackDeployment
from deployments.ingress import Ingress
from deployments.judge import JudgeDeployment
from deployments.provider import ProviderDeployment
from deployments.registry import RegistryDeployment
from deployments.router import RouterDeployment


def project_home() -> Path:
    """Where relative paths in `args` resolve: $PARETOSERVE_HOME, else the checkout this code
    runs from (Serve builds the app in a worker whose cwd is not the caller's)."""
    home = os.environ.get("PARETOSERVE_HOME")
    return Path(home) if home else Path(__file__).resolve().parent.parent


def _provider_options(name: str, settings: ProviderSettings, cfg: AppArgs) -> dict:
    options = cfg.deployments.provider.serve_options() | {"name": f"Provider_{name}"}
    if settings.replicas is not None:  # a fixed count replaces the autoscaling default
        options.update(num_replicas=settings.replicas, autoscaling_config=None)
    return options


def build_app(args: AppArgs) -> Application:
    """Serve validates `args` into AppArgs (a clear error names any bad field); every
    deployment gets its replica options from `args.deployments`."""
    cfg = AppArgs.model_validate(args).resolved(project_home())
    if not is_dsn(cfg.state_path):  # a PostgreSQL DSN names no folder
        Path(cfg.state_path).parent.mkdir(parents=True, exist_ok=True)
    opts = cfg.deployments
    embedder = Embedder.options(**opts.embedder.serve_options()).bind(
        cfg.embedder, cfg.max_prompt_chars
    )
    router = RouterDeployment.options(**opts.router.serve_options()).bind(cfg.router_settings())
    providers = {
        name: ProviderDeployment.options(**_provider_options(name, settings, cfg)).bind(
            name, settings
        )
        for name, settings in cfg.providers.items()
    }
    feedback = FeedbackDeployment.options(**opts.feedback.serve_options()).bind(
        router, cfg.state_path
    )
    registry = RegistryDeployment.options(**opts.registry.serve_options()).bind(
        cfg.models, cfg.state_path, router, sorted(providers)
    )
    judge_spec = cfg.judge_spec()
    judge = (
        None
        if judge_spec is None
        else JudgeDeployment.options(**opts.judge.serve_options()).bind(
            cfg.judge, judge_spec, feedback, providers, cfg.state_path
        )
    )
    return Ingress.options(**opts.ingress.serve_options()).bind(
        embedder,
        router,
        feedback,
        registry,
        providers,
        cfg.max_prompt_chars,
        cfg.admin_key_env,
        cfg.api_keys_env,
        context_cache_size=cfg.embedder.cache_size,
        judge=judge,
        judge_sample_rate=cfg.judge.sample_rate,
        judge_seed=cfg.judge.seed,
    )
