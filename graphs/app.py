"""The application builder: binds the deployments into the graph from typed `args`.

serve run serve_config.yaml          (import_path: graphs.app:build_app)
"""

from __future__ import annotations

import os
from pathlib import Path

from ray.serve import Application

from core.service.settings import AppArgs, ProviderSettings
from deployments.embedder import Embedder, EmbedderArgs
from deployments.feedback import FeedbackDeployment
from deployments.ingress import Ingress
from deployments.provider import ProviderDeployment
from deployments.registry import RegistryDeployment
from deployments.router import RouterDeployment


def project_home() -> Path:
    """Where relative paths in `args` resolve: $PARETOSERVE_HOME, else the checkout this code
    runs from (Serve builds the app in a worker whose cwd is not the caller's)."""
    home = os.environ.get("PARETOSERVE_HOME")
    return Path(home) if home else Path(__file__).resolve().parent.parent


def _provider_options(name: str, settings: ProviderSettings) -> dict:
    options: dict = {"name": f"Provider_{name}"}
    if settings.replicas is not None:  # a fixed count replaces the autoscaling default
        options.update(num_replicas=settings.replicas, autoscaling_config=None)
    return options


def build_app(args: AppArgs) -> Application:
    """Serve validates `args` into AppArgs (a clear error names any bad field)."""
    cfg = AppArgs.model_validate(args).resolved(project_home())
    Path(cfg.state_path).parent.mkdir(parents=True, exist_ok=True)
    embedder = Embedder.bind(EmbedderArgs.model_validate(cfg.embedder))
    router = RouterDeployment.bind(cfg.router_settings())
    providers = {
        name: ProviderDeployment.options(**_provider_options(name, settings)).bind(name, settings)
        for name, settings in cfg.providers.items()
    }
    feedback = FeedbackDeployment.bind(router, cfg.state_path)
    registry = RegistryDeployment.bind(cfg.models, cfg.state_path, router, sorted(providers))
    return Ingress.bind(
        embedder,
        router,
        feedback,
        registry,
        providers,
        cfg.max_prompt_chars,
        cfg.admin_key_env,
        cfg.api_keys_env,
    )
