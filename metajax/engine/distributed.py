"""One run across processes and hosts: JAX's multi-controller runtime (``jax.distributed``).

Every process runs the same command (``trainer.coordinator``, ``trainer.num_processes``,
``trainer.process_id``; or ``trainer.coordinator=auto`` under SLURM ``srun`` or a submitit job) and the
same program: the mesh spans every process's devices, tasks are sharded over them and the parameters are
replicated, so each process holds the whole model after every step. Batches are functions of
``(trainer.seed, step)``, hence equal on every process. Only process 0 (:func:`is_writer`) writes the run
directory; the decisions taken from its files (resume or not, from which step) are broadcast from it.

A process that dies is noticed by the coordination service after ``trainer.heartbeat_timeout`` seconds:
the others are then terminated by JAX ("Terminating process because the JAX distributed service detected
fatal errors … another task died"), instead of waiting in a collective. A process that fails on its own
(an exception) exits at once without the shutdown barrier (:func:`exit_now`), so the others follow within
the same timeout.
"""

from __future__ import annotations

import os
import re
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from metajax.engine.validation import ConfigError

_ADDRESS = re.compile(r"^\[?[\w.\-:]+\]?:\d{1,5}$")


def _submitit_local() -> tuple[str, int, int] | None:
    """``(coordinator, num_processes, process_id)`` inside a ``submitit_local`` job with several tasks."""
    job = os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    if job is None:
        return None
    port = int(os.environ.get("JAX_COORDINATOR_PORT", 0)) or 20000 + int(job) % 30000
    return (f"127.0.0.1:{port}", int(os.environ["SUBMITIT_LOCAL_NTASKS"]),
            int(os.environ["SUBMITIT_LOCAL_GLOBALID"]))


def initialize(trainer) -> None:
    """Join the cluster that ``trainer`` (the ``trainer`` config node) describes; nothing for one process.

    Must run before any JAX computation of the process. ``coordinator=None`` with ``num_processes=1`` is a
    single-process run; ``HOST:PORT`` is process 0's address (every process passes the same one);
    ``auto`` asks JAX's cluster detection (SLURM, Open MPI, …) or, inside a ``submitit_local`` job, the
    job's own ranks."""
    coordinator, n, rank = trainer.coordinator, trainer.num_processes, trainer.process_id
    if coordinator is None:
        if n != 1 or rank != 0:
            raise ConfigError(f"`trainer.num_processes` = {n} and `trainer.process_id` = {rank} need "
                              "`trainer.coordinator` (HOST:PORT of process 0, or auto).")
        return
    if coordinator != "auto":
        if not _ADDRESS.match(coordinator):
            raise ConfigError(f"`trainer.coordinator` must be HOST:PORT (e.g. 10.0.0.1:12345) or auto; got "
                              f"{coordinator!r}.")
        if n < 1 or not 0 <= rank < n:
            raise ConfigError(f"`trainer.process_id` must be in [0, `trainer.num_processes`) with "
                              f"`trainer.num_processes` ≥ 1; got process_id = {rank}, num_processes = {n}.")
    if trainer.heartbeat_timeout < 1:
        raise ConfigError(f"`trainer.heartbeat_timeout` must be a positive number of seconds; got "
                          f"{trainer.heartbeat_timeout}.")
    if jax.distributed.is_initialized():  # a second run in the same process (a sequential Hydra sweep)
        return
    local = _submitit_local() if coordinator == "auto" else None
    if local is not None:
        coordinator, n, rank = local
        if n == 1:
            return
    elif coordinator == "auto":
        coordinator = n = rank = None
    try:
        jax.distributed.initialize(
            coordinator, n, rank, local_device_ids=trainer.local_device_ids,
            initialization_timeout=trainer.init_timeout, heartbeat_timeout_seconds=trainer.heartbeat_timeout,
            shutdown_timeout_seconds=trainer.heartbeat_timeout)
    except ValueError as error:  # auto-detection found no cluster
        raise ConfigError(f"`trainer.coordinator=auto` found no cluster to join ({error}); run it under SLURM "
                          "`srun` or a submitit launcher, or give HOST:PORT.") from None
    except RuntimeError as error:
        if "before any JAX" in str(error) or "must be called before" in str(error):
            raise
        raise ConfigError(f"could not join the cluster at `trainer.coordinator` = {coordinator!r} as process "
                          f"{rank} of {n} within `trainer.init_timeout` = {trainer.init_timeout} s: {error}") \
            from None


def is_writer() -> bool:
    """True on the process that writes the run directory (process 0)."""
    return jax.process_index() == 0


def broadcast(tree):
    """``tree`` as process 0 holds it, on every process (the identity with one process)."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def put(tree, sharding):
    """Every array leaf of ``tree`` (a host value equal on every process) as one global array with
    ``sharding``; each process materialises only the shards of its own devices."""
    def one(leaf):
        value = np.asarray(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(one, tree)


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def exit_now(code: int) -> None:
    """Exit with ``code``; in a multi-process run without JAX's shutdown barrier, which would wait for the
    other processes (they are ended by the heartbeat timeout instead)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if jax.distributed.is_initialized():
        os._exit(code)
    sys.exit(code)
