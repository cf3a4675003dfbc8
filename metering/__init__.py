"""metering: usage metering for Apache CloudStack event streams.

The :mod:`metering` package is the pure core: decoding and classifying CloudStack
event-bus records, the per-resource lifecycle state machine, usage intervals and
aggregation periods, the simulator and the batch ``replay`` front end. It never
imports faust or a Kafka client; the Kafka and Faust wiring lives in :mod:`agents`.

All times are timezone-aware UTC; instants are integer milliseconds since the Unix
epoch unless a docstring says otherwise.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
