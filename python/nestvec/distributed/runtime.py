"""Ray plumbing: start or join Ray on demand, create the shard actors, and turn Ray's
errors into ours (a user's ValueError raised inside an actor is that ValueError here;
a dead actor is a :class:`ShardUnavailableError` naming the shard)."""
from __future__ import annotations

import os
import threading

from .actors import ShardReader, ShardWriter


class ShardUnavailableError(RuntimeError):
    """A shard's actor died (and, for reads, could not be restarted in time). The call
    that raised it returned nothing: no partial result, and for writes nothing
    committed (the message says which version the collection is at)."""


READER_DEFAULTS = {"num_cpus": 0, "max_restarts": 3, "max_task_retries": 3, "max_concurrency": 4,
                   "scheduling_strategy": "SPREAD"}
# Writes are never retried by Ray: a write that died is rolled back by the driver.
WRITER_DEFAULTS = {"num_cpus": 0, "max_restarts": 3, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
_ALLOWED = {"num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy", "max_restarts",
            "max_task_retries", "max_concurrency", "runtime_env", "name", "namespace", "lifetime",
            "label_selector", "accelerator_type"}
_remote_classes: dict = {}


def ray_module():
    """``ray``, started locally if no cluster is connected (``ray.init()`` joins the
    cluster that ``RAY_ADDRESS`` or a local ``ray start`` names)."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("nestvec.distributed needs Ray: pip install 'nestvec[ray]'") from e
    if not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True,
                 logging_level=os.environ.get("NESTVEC_RAY_LOG_LEVEL", "WARNING"))
    return ray


def options(defaults: dict, given, what: str) -> dict:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise TypeError(f"{what}: expected a dict of Ray actor options, got {type(given).__name__}")
    bad = sorted(set(given) - _ALLOWED)
    if bad:
        raise ValueError(f"{what}: unknown Ray actor options {bad}; allowed: {sorted(_ALLOWED)}")
    return {**defaults, **given}


def _cls(ray, cls):
    rc = _remote_classes.get(cls)
    if rc is None:
        rc = _remote_classes[cls] = ray.remote(cls)
    return rc


def writer(path: str, opts: dict, merge_policy=None):
    ray = ray_module()
    return _cls(ray, ShardWriter).options(**opts).remote(path, merge_policy)


def reader(path: str, opts: dict, device=None, threads=None):
    ray = ray_module()
    return _cls(ray, ShardReader).options(**opts).remote(path, device, threads)


# Reader actors are shared by every handle of this driver on the same shards and
# options: they serve any version a request names, so a writer's handle and read-only
# handles on the same root cost one set of processes.
_pools: dict = {}
_pools_lock = threading.Lock()


def acquire_readers(paths: list, per_shard: int, opts: dict, threads) -> tuple:
    """(key, [[handle] * per_shard per shard]); release with :func:`release_readers`."""
    ray = ray_module()
    key = (ray.get_runtime_context().get_job_id(), tuple(paths), per_shard, repr(sorted(opts.items())), threads)
    with _pools_lock:
        entry = _pools.get(key)
        if entry is None:
            entry = _pools[key] = [[[reader(p, opts, None, threads) for _ in range(per_shard)] for p in paths], 0]
        entry[1] += 1
        return key, entry[0]


def release_readers(key) -> None:
    with _pools_lock:
        entry = _pools.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _pools[key]
    kill([h for hs in entry[0] for h in hs])


def gather(refs: list, shards: list, what: str):
    """ray.get of one call per shard; errors raised as ours, after every call ended
    (no call is left running behind an exception)."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    out, first = [None] * len(refs), None
    for i, ref in enumerate(refs):
        try:
            out[i] = ray.get(ref)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, RayActorError):
                first = first or _dead(shards[i], what, cause)
            else:
                first = first or (cause if isinstance(cause, BaseException) else e)
        except RayActorError as e:
            first = first or _dead(shards[i], what, e)
    if first is not None:
        raise first
    return out


def _dead(shard, what, e) -> ShardUnavailableError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ShardUnavailableError(f"shard {shard}: its {what} actor died ({type(e).__name__}: {msg[:200]})")


def kill(handles) -> None:
    try:
        import ray
    except ImportError:
        return
    if not ray.is_initialized():
        return
    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:
            pass
