"""agents: the edge of metering: the Faust app and agents, Kafka I/O, the CLI, the local broker.

Only this package imports faust and aiokafka. Business decisions live in :mod:`metering`;
agents load state, call the core, store the result and send what it returns.
"""
