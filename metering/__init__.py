"""metering: usage metering for Apache CloudStack event streams.

The :mod:`metering` package is the pure core: decoding and classifying CloudStack
event-bus records, the per-resource lifecycle state machine, usage intervals and
aggregation periods, the simulator, and the root of the project's exceptions
(:mod:`metering.errors`). It never imports faust, a Kafka client, argparse, pyarrow or
pandas, and never prints; Parquet I/O and the batch ``replay`` runner live in
:mod:`storage`, the Kafka and Faust wiring and the command line in :mod:`agents`.

All times are timezone-aware UTC; instants are integer milliseconds since the Unix
epoch unless a docstring says otherwise.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
