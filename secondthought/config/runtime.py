"""Config of where the Ray stages run (``--ray.*``) and of the serving application (serve/config.yaml's
``args``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from secondthought.config.checks import ConfigError, check_choice, check_ranges


@dataclass
class RayConfig:
    """Where the Ray stages run."""

    address: Optional[str] = None
    """Ray cluster address ("auto", "ray://host:10001"); empty starts a local Ray on this machine."""
    num_cpus: Optional[int] = None
    """CPUs for a local Ray (default: all)."""

    def __post_init__(self) -> None:
        check_ranges("--ray", self, num_cpus="[1, inf)")



@dataclass
class ServeConfig:
    """The serving application: which model, on what device, and the bounds every request is held to.

    These are the application's ``args`` in serve/config.yaml (``serve run``, ``serve deploy``, a KubeRay
    RayService); ``secondthought serve --model DIR`` fills in ``model``. Replica counts, autoscaling and queue
    limits are Ray Serve's own deployment options in that file."""

    model: str = ""
    """The model folder to serve (config.json + safetensors; e.g. runs/demo/rl/model). A local path: nothing is
    downloaded at start."""
    device: str = "auto"
    """auto (cuda when the replica has a GPU, else cpu), cpu or cuda."""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), bf16 or fp32."""
    threads: int = 0
    """torch CPU threads per model replica (0: the replica's num_cpus, at least 1)."""
    decoding: str = "auto"
    """How /v1/realign decodes a model that writes chains: derived (the model writes its target, the answer's chain
    is the exact chain of edits to it: always valid, always its result), constrained (the model writes its chain,
    only chains that apply to the text), free, or auto: derived for a model trained with --sft.direct_targets above
    0, else constrained (README, Answer quality). Corrected edits sent back are continued constrained."""
    force_target: bool = True
    """In constrained decoding also force the target to the chain's result (the answer's target and result then
    agree)."""
    max_batch_size: int = 8
    """Requests decoded together by one model replica (@serve.batch)."""
    batch_wait_timeout_s: float = 0.01
    """How long a replica waits for a batch to fill."""
    max_text_chars: int = 2000
    """Longest text (and context) a request may send."""
    max_prompt_chars: int = 8000
    """Longest prompt /v1/completions accepts."""
    max_new_tokens: int = 256
    """Most tokens one request may ask for."""
    default_new_tokens: int = 128
    """Tokens written when a request does not say."""
    max_edits: int = 200
    """Most edits /v1/edits/apply and a corrected prefix may send."""
    max_body_bytes: int = 1 << 20
    """Largest request body (bytes): a larger one gets a 413 before it is read whole."""
    max_streams: int = 4
    """Streamed completions one model replica decodes at once (each in its own thread); more get a 503."""
    api_key: str = ""
    """If set, every route but the page and /healthz needs ``Authorization: Bearer KEY`` (empty: the environment
    variable SECONDTHOUGHT_API_KEY of the ingress replica, else no key). Prefer the variable on a cluster: the
    config's args are visible in Ray's dashboard."""

    def __post_init__(self) -> None:
        check_choice("serve.device", self.device, ("auto", "cpu", "cuda"))
        check_choice("serve.dtype", self.dtype, ("auto", "bf16", "fp32"))
        check_choice("serve.decoding", self.decoding, ("auto", "derived", "constrained", "free"))
        check_ranges("serve", self, **dict.fromkeys(("max_batch_size", "max_text_chars", "max_prompt_chars",
                                                     "max_new_tokens", "default_new_tokens", "max_edits",
                                                     "max_body_bytes", "max_streams"), "[1, inf)"))
        check_ranges("serve", self, threads="[0, inf)", batch_wait_timeout_s="[0, inf)")
        if self.default_new_tokens > self.max_new_tokens:
            raise ConfigError(f"serve.default_new_tokens ({self.default_new_tokens}) exceeds serve.max_new_tokens "
                              f"({self.max_new_tokens})")

