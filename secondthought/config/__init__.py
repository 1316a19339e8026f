"""The one config tree: small typed sections, defaults in them and nowhere else.

The CLI exposes every field as a flag (``--data.input``, ``--prepare.cost_sets``); a YAML file given with ``--config``
sets any of them. Validation errors name the flag to fix (``checks``). Sections by what they configure: ``data``
(data, prepare), ``training`` (sft, rl), ``evaluation`` (eval, transfer, humaneval), ``runtime`` (ray, serve).
"""

from secondthought.config.checks import ConfigError
from secondthought.config.data import DataConfig, PrepareConfig
from secondthought.config.evaluation import EvalConfig, HumanEvalConfig, TransferConfig
from secondthought.config.runtime import RayConfig, ServeConfig
from secondthought.config.training import EngineConfig, RLConfig, SFTConfig

__all__ = ["ConfigError", "DataConfig", "PrepareConfig", "EngineConfig", "SFTConfig", "RLConfig", "EvalConfig",
           "TransferConfig", "HumanEvalConfig", "RayConfig", "ServeConfig"]
