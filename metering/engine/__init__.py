"""The metering engine, in parts: lane clocks, accounts, settling, and the engine composing
them with the per-resource lifecycle (:mod:`metering.lifecycle`). See
:mod:`metering.engine.engine`."""

from metering.engine.engine import Engine
from metering.engine.lanes import LaneClock, Lanes
from metering.engine.policy import Applied, Policy, Record
from metering.watermarks import NEVER

__all__ = ["NEVER", "Applied", "Engine", "LaneClock", "Lanes", "Policy", "Record"]
