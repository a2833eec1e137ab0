"""`make_elector`: the leader election `leader:` configures (none, a Redis lease or a Kubernetes Lease)."""

from __future__ import annotations

from controller.config import LeaderConfig
from controller.leader import MAX_CALL_SECONDS, LeaderElector, NoElection, RedisElector, default_identity


def make_elector(config: LeaderConfig) -> LeaderElector:
    """The elector `leader:` configures."""
    identity = config.identity or default_identity()
    if config.kind == "none":
        return NoElection(identity)
    lease, renew = config.lease_seconds, config.renew_interval
    if config.kind == "redis":
        assert config.url is not None  # the config requires it
        return RedisElector(config.url, config.key, identity=identity, lease_seconds=lease, renew_every=renew)
    # Imported here: the kubernetes package is an optional extra.
    from controller.leader_k8s import KubernetesElector, KubernetesLeaseAPI

    # One attempt is a read and a write, and must fit in one call timeout.
    api = KubernetesLeaseAPI(config.name, config.namespace, timeout=min(renew, MAX_CALL_SECONDS) / 2)
    return KubernetesElector(api, identity=identity, lease_seconds=lease, renew_every=renew)
