"""A deterministic discrete-event simulator: our policy and KEDA-style baselines on job traces.

`simulate(trace, policy, model)` plays one trace against one policy in virtual time;
`vast-queue-scaler simulate --all` (`make bench`) runs the benchmark into bench/.
Modules: `traces` (job traces), `world` (queue, Vast workers and sessions), `policies` (ours and
KEDA), `oracle`, `measure` (one run), `bench` (the matrix and its checks), `report` (output).
"""

from controller.simulation.measure import PolicyFactory, Result, simulate
from controller.simulation.traces import Trace
from controller.simulation.world import Consumer, Controller, Model, World

__all__ = ["Consumer", "Controller", "Model", "PolicyFactory", "Result", "Trace", "World", "simulate"]
