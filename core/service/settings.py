"""Typed configuration of the service (the graph builder's `args`), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.method.config import (
    BanditConfig,
    BudgetUSD,
    CostSignal,
    PacerConfig,
    PacerMode,
    RouterConfig,
)
from core.method.faults import CooldownConfig, RetryPolicy
from core.method.registry import ModelSpec
from core.method.tenants import TenantSpec
from core.state.durable import DurabilityConfig

# AppArgs.priors_path's value for the committed artifact (core/artifacts/priors.json).
DEFAULT_PRIORS = "default"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProviderSettings(_Strict):
    """One provider client deployment: which client, and its options (see deployments/clients)."""

    kind: Literal["simulated", "openai", "anthropic"]
    options: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, description="retries of a failed call on the same model"
    )
    replicas: int | None = Field(
        None,
        ge=1,
        description="a fixed number of replicas instead of autoscaling (None: autoscale)",
    )


class RouterTuning(_Strict):
    """The method's knobs; the defaults are the paper's except the pacer's cost signal, the
    budget's running balance (`bank_memory`) and drop detection (`bandit.shift_threshold`)."""

    bandit: BanditConfig = BanditConfig()
    pacer_mode: PacerMode = PacerMode.ADAPTIVE
    cost_signal: CostSignal = CostSignal.EXPECTED_COST
    bank_memory: int = Field(
        PacerConfig.model_fields["bank_memory"].default,
        ge=0,
        description="requests the budget's running balance remembers; 0 = off (the paper's)",
    )
    forced_exploration_pulls: int = Field(20, ge=0)
    seed: int = 0

    def router_config(self, budget_usd: float) -> RouterConfig:
        return RouterConfig(
            bandit=self.bandit,
            pacer=PacerConfig(
                budget_usd=budget_usd,
                mode=self.pacer_mode,
                cost_signal=self.cost_signal,
                bank_memory=self.bank_memory,
            ),
            forced_exploration_pulls=self.forced_exploration_pulls,
            seed=self.seed,
        )


class RouterSettings(_Strict):
    """What the Router deployment needs: the method, its initial table, and where state lives."""

    budget_usd_per_request: BudgetUSD
    models: list[ModelSpec] = Field(..., min_length=1)
    tuning: RouterTuning = RouterTuning()
    state_path: str
    priors_path: str | None = Field(
        None, description="as AppArgs.priors_path ('default', a file, or None = cold start)"
    )
    projection_path: str | None = Field(
        None,
        description="the Embedder's projection (EmbedderArgs.projection_path): priors "
        "must have been built through it",
    )
    durability: DurabilityConfig = DurabilityConfig()
    faults: CooldownConfig = CooldownConfig()
    tenants: list[TenantSpec] = Field(
        default_factory=list, description="tenants created at start when absent"
    )


# ---- the Judge ---------------------------------------------------------------------------


class JudgeSettings(_Strict):
    """The Judge deployment (core/service/judge.py): which answers it scores, with which
    model, within which daily spend."""

    enabled: bool | Literal["auto"] = Field(
        "auto",
        description="auto = on when every provider is simulated (the embedded default), off "
        "when a real provider is configured",
    )
    sample_rate: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="share of answered auto-routed requests judged (forced-exploration pulls "
        "of a new model are always judged)",
    )
    model: str | None = Field(
        None,
        description="a registered model id to judge with; None (and no `spec`) = the "
        "registered model with the highest blended price",
    )
    spec: ModelSpec | None = Field(
        None, description="a dedicated judge model (not routed to); its provider must exist"
    )
    daily_cap_usd: float = Field(
        5.0, ge=0.0, le=1e6, allow_inf_nan=False, description="judge spend per UTC day"
    )
    client_grace_s: float = Field(
        30.0,
        ge=0.0,
        le=86_400.0,
        description="seconds after an answer before it is judged; the application's own "
        "feedback within them wins (the judge then spends nothing)",
    )
    max_attempts: int = Field(3, ge=1, le=10, description="tries of a failing judge call")
    backoff_s: float = Field(1.0, ge=0.0, le=60.0, description="first retry wait; doubles")
    concurrency: int = Field(8, ge=1, le=1024, description="judge calls in flight at most")
    max_outstanding: int = Field(
        10_000, ge=1, le=1_000_000, description="answers waiting or being judged; more are skipped"
    )
    seed: int = Field(0, description="seed of the sampling draw")


# ---- the Embedder ------------------------------------------------------------------------

MAX_PROMPT_CHARS = 100_000  # default: longer prompts get a 413 (the Ingress) / are refused
# On CPU a forward pass costs ~ batch x longest prompt, and prompt lengths are long-tailed, so
# one padded pass over 32 real prompts is ~1.5x slower than 32 single-prompt calls, while
# length-sorted passes of 4 are ~1.3x faster (docs/benchmarks.md, "Embedder").
CPU_ENCODE_BATCH_SIZE = 4
# Dynamic int8 scales activations per pass, so passes of 1 keep an int8 vector a function of its
# prompt alone; in passes of 4 padding and pass-mates cost accuracy (cosine min 0.955) and
# throughput (docs/benchmarks.md, "Embedder"). So int8 runs passes of 1 only.
INT8_ENCODE_BATCH_SIZE = 1
Backend = Literal["torch", "onnx-fp32", "onnx-int8", "static"]


class EmbedderArgs(BaseModel):
    """Typed `args` of the Embedder deployment (from serve_config.yaml or the graph builder)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend = Field(
        default="torch",
        description="torch = sentence-transformers (CPU or GPU, the reference vectors); "
        "onnx-fp32 / onnx-int8 = ONNX Runtime on CPU (core.encoding.minilm_onnx: built from "
        "the packaged weights on first use and cached; int8: cosine >= 0.995 to torch); "
        "static = token vectors distilled from the same weights and mapped into torch's space "
        "(core.encoding.minilm_static: ~70x int8's prompts per CPU-second, routes within 0.002 "
        "of torch; reads at most 256 tokens whatever max_seq_length says)",
    )
    cache_size: int = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="in-memory LRU of contexts keyed by sha256(prompt); a hit skips batching "
        "and encoding; 0 = off",
    )
    device: str | None = Field(
        default=None,
        pattern=r"^(cpu|cuda(:\d+)?|mps)$",
        description="torch device; None = cuda if the replica has a GPU, else cpu",
    )
    max_seq_length: int = Field(
        default=256,
        ge=1,
        le=512,
        description="tokens read per prompt (longer prompts are truncated); must match the "
        "projection's encoder (the committed artifact is fitted for 256)",
    )
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    encode_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="prompts per forward pass: a batch is sorted by length and encoded in "
        "chunks of this size, so short prompts are not padded to the longest; None = "
        f"{CPU_ENCODE_BATCH_SIZE} on CPU (padding costs compute there), max_batch_size on GPU",
    )
    # No effect since the Embedder batches only while a batch is encoding
    # (core/service/busy_batcher.py: a lone prompt waits for nobody); still accepted, so that
    # configurations that set it keep loading.
    batch_wait_timeout_s: float = Field(
        default=0.005, ge=0.0, le=10.0, description="no effect (kept for older configurations)"
    )
    projection_path: str | None = Field(
        default=None,
        description="projection JSON; None = the committed core/artifacts/projection.json "
        "(falls back to a seeded random projection, with a warning, if it is missing)",
    )

    @model_validator(mode="after")
    def _int8_runs_passes_of_one(self) -> EmbedderArgs:
        if self.backend == "onnx-int8" and self.encode_batch_size not in (None, 1):
            raise ValueError(
                "backend onnx-int8 encodes one prompt per pass (encode_batch_size 1 or unset): "
                "in passes of several, padding and pass-mates cost int8 accuracy"
            )
        return self


# ---- replica options ---------------------------------------------------------------------
# The graph builder (graphs/app.py) applies these; serve_config.yaml's `deployments:` entries
# state the same numbers (a test keeps the two equal) and override them at deploy time.


class Autoscaling(_Strict):
    """Serve's autoscaling_config: replicas follow the ongoing requests per replica."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(..., gt=0)
    # Serve's default waits 600 s; a minute keeps idle replicas from holding the 2 cores.
    downscale_delay_s: float = Field(60.0, ge=0)


class DeploymentOptions(_Strict):
    """One deployment's replica options: a fixed `num_replicas` or `autoscaling`."""

    num_cpus: float = Field(..., gt=0, description="CPUs per replica (fractions fit 2 cores)")
    max_ongoing_requests: int = Field(..., ge=1)
    num_replicas: int | None = Field(None, ge=1)
    autoscaling: Autoscaling | None = None
    # Serve's access log line per call: the Ingress's is the request log; the inner hops' lines
    # cost ~20% of a replica's CPU per call (py-spy, docs/benchmarks.md) and repeat it.
    access_log: bool = False

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentOptions:
        if (self.num_replicas is None) == (self.autoscaling is None):
            raise ValueError("give either num_replicas or autoscaling")
        return self

    def serve_options(self) -> dict[str, Any]:
        """The keyword arguments of Serve's `Deployment.options`."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "logging_config": {"enable_access_log": self.access_log},
        }
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            opts.update(num_replicas=self.num_replicas, autoscaling_config=None)
        return opts


class Deployments(_Strict):
    """Replica options of every deployment; `provider` applies to each provider client."""

    ingress: DeploymentOptions = DeploymentOptions(
        num_cpus=0.2,
        max_ongoing_requests=256,
        autoscaling=Autoscaling(target_ongoing_requests=32),
        access_log=True,
    )
    # int8 encodes one prompt per pass (~6 ms): 8 waiting prompts are a queue worth a second
    # replica (a target of 32 never triggered under a 128-user locust run).
    embedder: DeploymentOptions = DeploymentOptions(
        num_cpus=0.5,
        max_ongoing_requests=256,
        autoscaling=Autoscaling(target_ongoing_requests=8),
    )
    # The Router holds the learning state: exactly one replica.
    router: DeploymentOptions = DeploymentOptions(
        num_cpus=0.25, max_ongoing_requests=4096, num_replicas=1
    )
    feedback: DeploymentOptions = DeploymentOptions(
        num_cpus=0.1, max_ongoing_requests=1024, num_replicas=1
    )
    # One replica: it owns the judge's daily spend account.
    judge: DeploymentOptions = DeploymentOptions(
        num_cpus=0.05, max_ongoing_requests=4096, num_replicas=1
    )
    registry: DeploymentOptions = DeploymentOptions(
        num_cpus=0.05, max_ongoing_requests=256, num_replicas=1
    )
    provider: DeploymentOptions = DeploymentOptions(
        num_cpus=0.1,
        max_ongoing_requests=512,
        autoscaling=Autoscaling(target_ongoing_requests=64),
    )

    @model_validator(mode="after")
    def _one_router(self) -> Deployments:
        if self.router.num_replicas != 1:
            raise ValueError("deployments.router: the Router is stateful; num_replicas must be 1")
        if self.judge.num_replicas != 1:
            raise ValueError("deployments.judge: it owns the judge's spend; num_replicas must be 1")
        return self


class AppArgs(_Strict):
    """`args` of graphs.app:build_app, as written in serve_config.yaml."""

    budget_usd_per_request: BudgetUSD
    models: list[ModelSpec] = Field(..., min_length=1)
    providers: dict[str, ProviderSettings] = Field(
        default_factory=lambda: {"simulated": ProviderSettings(kind="simulated")}
    )
    state_path: str = "var/paretoserve.db"
    priors_path: str | None = Field(
        DEFAULT_PRIORS,
        description="warm-start priors of a fresh Router (no snapshot yet): 'default' = the "
        "committed core/artifacts/priors.json, used when it fits (the Embedder's projection, "
        "exactly the configured models), else a logged warning and a cold start; a file path "
        "(relative to the project home) = that file, and any misfit is a start-up error; "
        "None = cold start (core/service/warm_start.py)",
    )
    router: RouterTuning = RouterTuning()
    durability: DurabilityConfig = DurabilityConfig()
    faults: CooldownConfig = Field(
        default_factory=CooldownConfig,
        description="cool-downs of failing models and how far a request falls back",
    )
    embedder: EmbedderArgs = EmbedderArgs()
    judge: JudgeSettings = JudgeSettings()
    tenants: list[TenantSpec] = Field(
        default_factory=list,
        description="tenants created at start when absent (the admin API changes them at run "
        "time, and its changes are kept); their keys come from the admin API only",
    )
    max_prompt_chars: int = Field(MAX_PROMPT_CHARS, ge=1, description="longer prompts get a 413")
    deployments: Deployments = Deployments()
    admin_key_env: str = "PARETOSERVE_ADMIN_KEY"
    api_keys_env: str = "PARETOSERVE_API_KEYS"

    @model_validator(mode="after")
    def _providers_exist(self) -> AppArgs:
        missing = sorted({m.provider for m in self.models} - set(self.providers))
        if missing:
            raise ValueError(f"models use providers with no entry in `providers`: {missing}")
        ids = [m.id for m in self.models]
        if len(ids) != len(set(ids)):
            raise ValueError("model ids must be unique")
        judge = self.judge
        if judge.model is not None and judge.spec is not None:
            raise ValueError("judge: give `model` (a registered id) or `spec`, not both")
        if judge.model is not None and judge.model not in ids:
            raise ValueError(f"judge.model {judge.model!r} is not a registered model")
        if judge.spec is not None and judge.spec.provider not in self.providers:
            raise ValueError(f"judge.spec.provider {judge.spec.provider!r} has no entry")
        tenant_ids = [t.id for t in self.tenants]
        if len(tenant_ids) != len(set(tenant_ids)):
            raise ValueError("tenants: ids must be unique")
        return self

    def judge_spec(self) -> ModelSpec | None:
        """The judge model when the Judge is on, else None (`JudgeSettings.enabled`)."""
        judge = self.judge
        on = judge.enabled
        if on == "auto":
            on = all(p.kind == "simulated" for p in self.providers.values())
        if not on:
            return None
        if judge.spec is not None:
            return judge.spec
        if judge.model is not None:
            return next(m for m in self.models if m.id == judge.model)
        return max(self.models, key=lambda m: m.blended_price)

    def resolved(self, base: Path) -> AppArgs:
        """Relative paths resolved against `base` (replicas do not share the caller's cwd)."""

        def absolute(p: str | None) -> str | None:
            return None if p is None else str((base / p).resolve())

        priors = self.priors_path
        return self.model_copy(
            update={
                "state_path": self.state_path  # a DSN is no path (core/state/open_store.py)
                if self.state_path.startswith(("postgresql://", "postgres://"))
                else absolute(self.state_path),
                "priors_path": priors if priors == DEFAULT_PRIORS else absolute(priors),
                "embedder": self.embedder.model_copy(
                    update={"projection_path": absolute(self.embedder.projection_path)}
                ),
            }
        )

    def router_settings(self) -> RouterSettings:
        return RouterSettings(
            budget_usd_per_request=self.budget_usd_per_request,
            models=self.models,
            tuning=self.router,
            state_path=self.state_path,
            priors_path=self.priors_path,
            projection_path=self.embedder.projection_path,
            durability=self.durability,
            faults=self.faults,
            tenants=self.tenants,
        )
