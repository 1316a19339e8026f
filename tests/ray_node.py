"""A second Ray node on this machine, joined to a head on 127.0.0.1: what ``ray start --address HEAD --block``
does, for the multi-node tests.

``ray start --address`` refuses to start a worker node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with
the variable at 1 the node takes the machine's network address and listens on every address. This starts
the same raylet, object store and agents (``ray._private.node.Node``, as ``ray start`` and Ray's own
``cluster_utils.Cluster`` do) with the node's address 127.0.0.1, so that every socket stays on loopback.
Runs until SIGTERM, then ends the node's processes.

    python -m tests.ray_node --address 127.0.0.1:PORT --num-cpus 2 --resources '{"node_b": 1}' --temp-dir /tmp/rn1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the head's GCS address, 127.0.0.1:PORT")
    parser.add_argument("--num-cpus", type=int, default=1)
    parser.add_argument("--resources", default="{}", help="custom resources as JSON")
    parser.add_argument("--object-store-memory", type=int, default=200 * 1024 * 1024)
    parser.add_argument("--temp-dir", required=True,
                        help="the node's own Ray temp dir (keep it short: it holds unix sockets): two nodes of one "
                             "machine must not share one, as the nodes of a real cluster do not")
    args = parser.parse_args()
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        sys.exit("tests.ray_node: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (keeps the node on 127.0.0.1)")

    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        node_ip_address="127.0.0.1", gcs_address=args.address, num_cpus=args.num_cpus, num_gpus=0,
        resources=json.loads(args.resources), object_store_memory=args.object_store_memory,
        include_log_monitor=False, node_manager_port=0, min_worker_port=0, max_worker_port=0, temp_dir=args.temp_dir)
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print(f"node started: {node.node_id} at 127.0.0.1 joined to {args.address}", flush=True)
    while not stopping:
        time.sleep(0.2)
    node.kill_all_processes(check_alive=False, allow_graceful=True)


if __name__ == "__main__":
    main()
