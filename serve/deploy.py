"""Reading serve/config.yaml strictly, and deploying it on a Ray of ours the way ``serve run`` does.

Ray's ``ServeDeploySchema`` accepts keys it does not define (``max_ongoing_request`` passes, and is ignored), so
:func:`unknown_keys` walks the file against the schema's models, nested ones included, and the application's
``args`` against :class:`secondthought.config.ServeConfig`.
"""

from __future__ import annotations

import time
import typing
from dataclasses import fields
from pathlib import Path

import yaml
from pydantic import BaseModel

from secondthought import console
from secondthought.config import ConfigError, ServeConfig

CONFIG = Path(__file__).with_name("config.yaml")
GPU_CONFIG = Path(__file__).with_name("config.gpu.yaml")


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _is_list(annotation) -> bool:
    return typing.get_origin(annotation) is list or any(_is_list(a) for a in typing.get_args(annotation))


def unknown_keys(value, model: type[BaseModel], where: str = "") -> list[str]:
    """Every key of ``value`` (a parsed config) that ``model`` does not define, as dotted paths."""
    if not isinstance(value, dict):
        return []
    found = []
    for key, item in value.items():
        path = f"{where}.{key}" if where else str(key)
        field = model.model_fields.get(key) or next((f for f in model.model_fields.values() if f.alias == key), None)
        if field is None:
            found.append(path)
            continue
        for inner in _models_in(field.annotation)[:1]:
            items = item if _is_list(field.annotation) and isinstance(item, list) else [item]
            for k, one in enumerate(items):
                found += unknown_keys(one, inner, f"{path}[{k}]" if items is item else path)
    return found


def check_config(raw: dict, source: str = "serve config"):
    """``raw`` as Ray's ServeDeploySchema, refusing unknown keys anywhere (also in each application's args)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    unknown = unknown_keys(raw, ServeDeploySchema)
    known_args = {f.name for f in fields(ServeConfig)}
    for k, app in enumerate(raw.get("applications") or []):
        unknown += [f"applications[{k}].args.{a}" for a in (app.get("args") or {}) if a not in known_args]
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} (misspelled? Ray would ignore them)")
    try:
        return ServeDeploySchema.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"{source}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def load_config(path: str | Path | None = None, model: str | None = None, host: str | None = None,
                port: int | None = None, api_key: str | None = None) -> dict:
    """The config file with the model folder, the HTTP address and the API key filled in, checked."""
    path = Path(path) if path else CONFIG
    if not path.is_file():
        raise ConfigError(f"--app-config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        raise ConfigError(f"--app-config {path}: not valid YAML{f' at line {where.line + 1}' if where else ''}: "
                          f"{getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--app-config {path}: a mapping of Serve's keys (http_options, applications, ...) is "
                          f"expected, got a {type(raw).__name__}")
    if model is not None:
        for app in raw.get("applications") or []:
            app.setdefault("args", {})["model"] = str(Path(model).expanduser().resolve())
    if api_key is not None:
        for app in raw.get("applications") or []:
            app.setdefault("args", {})["api_key"] = api_key
    http = raw.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    check_config(raw, str(path))
    for k, app in enumerate(raw.get("applications") or []):
        try:
            ServeConfig(**(app.get("args") or {}))
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"--app-config {path}: applications[{k}].args: {e}") from None
    return raw


def deploy(raw: dict, timeout_s: float = 300.0, poll_s: float = 0.5) -> str:
    """Start Serve on the Ray this process is connected to and deploy ``raw`` (as ``serve run config.yaml``
    does); wait until every application runs. Returns the URL. A failed deployment raises with Serve's message."""
    from ray import serve
    from ray.serve.context import _get_global_client

    schema = check_config(raw)
    http = schema.http_options
    serve.start(proxy_location=schema.proxy_location, http_options=http.model_dump())
    _get_global_client().deploy_apps(schema, _blocking=False)
    deadline = time.monotonic() + timeout_s
    names = [app.name for app in schema.applications]
    while True:
        apps = serve.status().applications
        states = {name: apps[name] for name in names if name in apps}
        failed = {n: s.message for n, s in states.items() if s.status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError("; ".join(f"application {n} failed to deploy: {m}" for n, m in failed.items()))
        if len(states) == len(names) and all(s.status == "RUNNING" for s in states.values()):
            return f"http://{http.host}:{http.port}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"the applications were not running after {timeout_s:.0f} s: "
                               + ", ".join(f"{n} {s.status}" for n, s in states.items()))
        time.sleep(poll_s)


def main(args, sections: dict) -> None:
    """`secondthought serve`: deploy the config on a local Ray and serve until Ctrl-C."""
    from secondthought.runs import model_folder
    from secondthought.runtime import ray_session

    model_folder(args.model, "--model")
    raw = load_config(args.app_config, args.model, args.host, args.port, args.api_key)
    with ray_session(sections["ray"]):
        from ray import serve

        try:
            url = deploy(raw)
            console.say(f"serving {args.model}\n  page:    {url}/\n  API:     {url}/v1/realign, "
                        f"{url}/v1/edits/apply, {url}/v1/completions (OpenAI), {url}/docs\nCtrl-C stops the server")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how a server is meant to stop
            console.say("stopping the server")
        finally:
            serve.shutdown()
