"""Size limits of the worker's own Kafka records, checked against the producer's limit.

Every record the worker accepts must be one it could itself send: its reject
(:mod:`metering.rejects`) and its forwarded event (:mod:`metering.wire`) must each fit in
one producer request. Sizes are bytes.
"""

from __future__ import annotations

from metering.rejects import MAX_REJECT_MESSAGE_BYTES, PRODUCER_MAX_REQUEST_BYTES
from metering.wire import MAX_ROUTED_MESSAGE_BYTES


def record_limit_problems(max_record_bytes: int,
                          producer_max_request_bytes: int = PRODUCER_MAX_REQUEST_BYTES,
                          max_forwarded_bytes: int | None = None) -> list[str]:
    """Why ``max_record_bytes`` (bytes) cannot work with the producer's limit, or ``[]``.

    A record the worker accepts must be one it could itself send (a record above the
    producer's max request size could not be forwarded or copied anywhere), and the
    largest reject and forwarded event must fit in one request.
    """
    forwarded = MAX_ROUTED_MESSAGE_BYTES if max_forwarded_bytes is None else max_forwarded_bytes
    problems = []
    if max_record_bytes > producer_max_request_bytes:
        problems.append(
            f"max_record_bytes: {max_record_bytes} is above the producer's max request size "
            f"({producer_max_request_bytes} bytes, Faust producer_max_request_size): records "
            f"that large could not be forwarded or sent anywhere by the worker; set "
            f"max_record_bytes (METERING_MAX_RECORD_BYTES / --max-record-bytes) to at most "
            f"{producer_max_request_bytes}")
    if producer_max_request_bytes < MAX_REJECT_MESSAGE_BYTES:
        problems.append(
            f"max_record_bytes: a reject can take {MAX_REJECT_MESSAGE_BYTES} bytes, above the "
            f"producer's max request size ({producer_max_request_bytes} bytes)")
    if forwarded > producer_max_request_bytes:
        problems.append(
            f"max_record_bytes: a forwarded event can take {forwarded} bytes, above the "
            f"producer's max request size ({producer_max_request_bytes} bytes)")
    return problems
