"""Helpers of the serving tests: a free loopback port, the shipped config made fit for a test Ray, requests."""

from __future__ import annotations

import socket
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployment(raw: dict, name: str) -> dict:
    return next(d for d in raw["applications"][0]["deployments"] if d["name"] == name)


def config_for(model: Path, port: int) -> dict:
    """serve/config.yaml for a test: this model, a free loopback port, replicas small enough for a 2-CPU Ray."""
    from serve.deploy import load_config

    raw = load_config(None, str(model), "127.0.0.1", port)
    deployment(raw, "Api")["ray_actor_options"]["num_cpus"] = 0.1
    deployment(raw, "Realigner")["ray_actor_options"]["num_cpus"] = 0.5
    raw["applications"][0]["args"]["threads"] = 1
    return raw


def post(url: str, path: str, body) -> requests.Response:
    return requests.post(url + path, json=body, timeout=60)
