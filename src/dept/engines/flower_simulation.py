"""`train.engine=flower`: the whole run as a Flower federation in Flower's simulation runtime, on this machine.

One virtual SuperNode per configured source (the source at position `partition-id`), each ClientApp with
`flower.client_cpus` CPUs and `flower.client_gpus` GPUs (Ray backend); the ServerApp runs dept's round loop in
this process and writes the run folder as every engine does.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from dept.config import Config
from dept.engines.flower_env import quiet_flower


def train_in_simulation(cfg: Config, resume: bool, log: Callable[[str], None] = print) -> None:
    quiet_flower()
    from flwr.simulation import run_simulation

    from dept.engines.flower_app import client_app, server_app_for

    failures: list[BaseException] = []
    backend_config = {
        "client_resources": {"num_cpus": cfg.flower.client_cpus, "num_gpus": cfg.flower.client_gpus},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
    }
    run_simulation(server_app=server_app_for(cfg, resume, log, failures), client_app=client_app,
                   num_supernodes=len(cfg.data.sources), backend_config=backend_config)
    if failures:
        raise failures[0]
