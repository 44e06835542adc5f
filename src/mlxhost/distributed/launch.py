"""Starting ``mlxhost serve`` as a distributed group (``--ranks N`` / ``--hostfile``).

Three roles, told apart by the environment the launcher gives each rank
(``MLXHOST_GROUP``: rank 0's address for the side channel, ``runtime.group_link``):

- the **launcher** (``--hostfile``, no ``MLXHOST_GROUP``): runs ``mlx.launch``
  with the hostfile and the same ``mlxhost serve`` arguments, forwards SIGTERM
  and SIGINT to it, and returns non-zero when a rank failed (``mlx.launch`` ends
  the others when one fails, but itself exits 0).
- **rank 0** serves HTTP (``app.create_app(group=...)``). With ``--ranks N`` the
  process the user started is rank 0 and starts ranks 1..N-1 itself, over
  loopback ring ports it picks, and watches them.
- a **follower** (``runtime.follower``) opens no port; it ignores SIGTERM and
  SIGINT (rank 0 ends the group: SHUTDOWN, or its side channel closing).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any

from mlxhost.settings.table import Settings, SettingsError

log = logging.getLogger(__name__)

GROUP_ENV = "MLXHOST_GROUP"  # rank 0's host; set on every rank of a group
BACKEND_ENV = "MLXHOST_GROUP_BACKEND"
GROUP_LOST_EXIT = 3  # rank 0's exit status when a follower died or hung
NOT_SHARDABLE_EXIT = 2


def check(settings: Settings) -> None:
    """Settings that cannot work together in (or out of) a group: a clear error."""
    grouped = settings.ranks > 1 or settings.hostfile is not None
    if settings.ranks < 1:
        raise SettingsError(f"--ranks: expected at least 1, got {settings.ranks}")
    if settings.ranks > 1 and settings.hostfile is not None:
        raise SettingsError("--ranks and --hostfile: give one (a hostfile lists the ranks)")
    if not grouped:
        if settings.pipeline:
            raise SettingsError("--pipeline splits a model over a group: add --ranks N or --hostfile")
        if settings.distributed_backend != "auto":
            raise SettingsError("--distributed-backend needs a group: add --ranks N or --hostfile")
        return
    if settings.ranks > 1 and settings.distributed_backend not in ("auto", "ring"):
        raise SettingsError(
            f"--ranks starts local ranks over the ring backend; for "
            f"{settings.distributed_backend} list the ranks in a --hostfile"
        )
    if settings.weights == "bf16":
        raise SettingsError("--weights bf16 does not apply to sharded models: use as-is or auto")


def role(env: dict[str, str] | None = None) -> str:
    """'leader' or 'follower' inside a group, else 'outside' (a single server or a
    launcher, as the settings say)."""
    env = dict(os.environ if env is None else env)
    if GROUP_ENV not in env:
        return "outside"
    return "leader" if env_rank(env) == 0 else "follower"


def env_rank(env: dict[str, str]) -> int:
    for name in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if env.get(name, "").strip():
            return int(env[name])
    return 0


def resolve_backend(settings: Settings) -> str:
    """The flag, else the hostfile's ``backend``, else nccl on CUDA, else ring."""
    if settings.distributed_backend != "auto":
        return settings.distributed_backend
    if settings.hostfile is not None:
        with open(settings.hostfile) as fid:
            data = json.load(fid)
        if isinstance(data, dict) and data.get("backend"):
            return str(data["backend"])
    import mlx.core as mx

    return "nccl" if mx.cuda.is_available() else "ring"


def leader_host(hostfile: str) -> str:
    """Rank 0's address from an mlx.launch hostfile (its first IP, else its ssh name)."""
    from mlx._distributed_utils.common import Hostfile

    first = Hostfile.from_file(hostfile).hosts[0]
    return first.ips[0] if first.ips else first.ssh_hostname


def _free_ports(count: int) -> list[int]:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    try:
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def rank_threads(ranks: int) -> str:
    """BLAS threads per local rank: the cores shared out (2 ranks on 2 cores: 1 each)."""
    return str(max(1, (os.cpu_count() or 1) // ranks))


def start_local_ranks(settings: Settings, argv: list[str]) -> Any:
    """``--ranks N``: this process becomes rank 0 of N over loopback and starts the
    others (the same ``mlxhost serve`` arguments); returns rank 0's GroupPlan."""
    from mlxhost.distributed.leader import GroupPlan

    ports = _free_ports(settings.ranks)
    fd, hostfile = tempfile.mkstemp(prefix="mlxhost-ring-", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump([[f"127.0.0.1:{port}"] for port in ports], out)
    group_env = {
        "MLX_HOSTFILE": hostfile,
        GROUP_ENV: "127.0.0.1",
        BACKEND_ENV: "ring",
    }
    threads = rank_threads(settings.ranks)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        group_env.setdefault(name, os.environ.get(name) or threads)
    children = []
    for rank in range(1, settings.ranks):
        env = {**os.environ, **group_env, "MLX_RANK": str(rank)}
        command = [sys.executable, "-m", "mlxhost.cli.main", *argv]
        children.append((rank, subprocess.Popen(command, env=env)))
    os.environ.update({**group_env, "MLX_RANK": "0"})
    log.info("Started ranks 1-%d (pids %s)", settings.ranks - 1, [c.pid for _, c in children])
    return GroupPlan("ring", "127.0.0.1", settings.pipeline, tuple(children))


def end_children(plan: Any, wait: float = 5.0) -> None:
    """Rank 0 leaving: the ranks it started end too (they normally left at SHUTDOWN)."""
    import time

    deadline = time.monotonic() + wait
    for _, child in plan.children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def kill_children(plan: Any) -> None:
    for _, child in plan.children:
        if child.poll() is None:
            child.kill()


def launch_hostfile(settings: Settings, argv: list[str]) -> int:
    """``--hostfile``: run the group through mlx.launch; its status is ours."""
    assert settings.hostfile is not None
    backend = resolve_backend(settings)
    host = leader_host(settings.hostfile)
    command = [
        sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()",
        "--hostfile", settings.hostfile, "--backend", backend,
        "--python", sys.executable,
        "--env", f"{GROUP_ENV}={host}", "--env", f"{BACKEND_ENV}={backend}",
        "--", "-m", "mlxhost.cli.main", *argv,
    ]
    process = subprocess.Popen(command, start_new_session=True)
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        # Rank 0 shuts down gracefully on SIGTERM; the followers ignore it and
        # leave when rank 0 tells them (or its side channel closes). mlx.launch
        # itself dies of it at once (it has no handler), so rank 0's last log
        # lines after this may not be relayed.
        forwarded.append(signum)
        os.killpg(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = process.wait()
    if code < 0:  # mlx.launch ended by a signal: ours is a requested stop
        return 0 if -code in forwarded else 128 - code
    return code


def plan_from_env(settings: Settings) -> Any:
    """Rank 0 started by mlx.launch (``--hostfile``): its GroupPlan."""
    from mlxhost.distributed.leader import GroupPlan

    return GroupPlan(os.environ[BACKEND_ENV], os.environ[GROUP_ENV], settings.pipeline)


def run_follower(settings: Settings) -> int:
    """A follower rank: join, meet rank 0, run its commands until SHUTDOWN."""
    from mlxhost.distributed.follower import Follower
    from mlxhost.distributed.group_link import FollowerLink
    from mlxhost.distributed.leader import handshake
    from mlxhost.distributed.protocol import MLXGroup
    from mlxhost.distributed.sharding import Sharder
    from mlxhost.families.builtin.mlx_engine import make_mlx_engine
    from mlxhost.families.plugins import make_plugin_manager

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    group = MLXGroup.init(os.environ[BACKEND_ENV])
    port, _ = handshake(group)
    link = FollowerLink(os.environ[GROUP_ENV], port, group.rank)
    sharder = Sharder(make_plugin_manager(disabled=settings.disabled_plugins), settings.pipeline)
    sharder.group = group.mx_group
    engine = make_mlx_engine(settings, sharder)
    log.info("Rank %d of %d: following rank 0", group.rank, group.size)
    follower = Follower(group, engine, link.wait_for_wake)
    try:
        follower.run()
    finally:
        link.close()
    log.info("Rank %d: shut down after %d commands", group.rank, follower.handled)
    return 0
