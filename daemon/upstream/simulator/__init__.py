"""The upstream simulator: a test double of BehavioralStreamingApi with a marker-tone label rule.
It is not a detector; see rule.py for the rule and server.py for the protocol it enforces."""

from daemon.upstream.simulator.server import SIMULATED_HEADER, Faults, SimulatorServer, StreamRecord

__all__ = ["SIMULATED_HEADER", "Faults", "SimulatorServer", "StreamRecord"]
