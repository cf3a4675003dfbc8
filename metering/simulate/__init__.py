"""``metering simulate``: a seeded CloudStack cloud whose true usage is known by construction.

* :mod:`.cloud`: the discrete-event simulation (accounts, VMs, volumes, IPs, ...).
* :mod:`.gson`: CloudStack's exact JSON style (HashMap key order, HTML escapes).
* :mod:`.render`: timestamps, malformed extras, kcat envelopes, Kafka's murmur2 partitioner.
* :mod:`.truth`: the true usage per account, usage type and resource.
* :mod:`.run`: streaming to files, live pacing, progress, the truth document.

The command line (and the Kafka producer) are in :mod:`agents.simulate`.
"""

from metering.simulate.cloud import Cloud, SimConfig
from metering.simulate.run import stream, write_records

__all__ = ["Cloud", "SimConfig", "stream", "write_records"]
