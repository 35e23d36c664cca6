"""Deterministic multi-node simulation: virtual clock, virtual network with NATs, and a harness.

``vpncloud.sim.network`` has no dependency on the protocol core; ``vpncloud.sim.harness`` runs
:class:`vpncloud.core.node.Node` instances on it (import it explicitly).
"""

from .network import DropNth, LinkParams, NatBox, NatKind, Network, Scheduler

__all__ = ["DropNth", "LinkParams", "NatBox", "NatKind", "Network", "Scheduler"]
