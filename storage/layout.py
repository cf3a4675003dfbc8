"""Names of the Parquet dataset layout and of the batch commands' choices (no imports).

Kept apart from :mod:`storage.dataset` (which loads pyarrow) so that the command line can
describe the dataset without loading pyarrow: ``metering compact --help`` must start fast.
"""

from __future__ import annotations

from typing import Final

PARTITION_COLUMN: Final = "usage_date"
"""Hive partition column: the date of ``period_start`` in the period time zone."""
SORT_COLUMNS: Final = ("account_id", "start", "usage_type", "resource_id", "interval_id")
"""Row order of written files."""
COMPACTED_NAME: Final = "part-compacted.parquet"
"""The one file of a compacted day."""
ON_CONFLICT: Final = ("fail", "keep-latest")
"""What ``compact`` does with versions of one ``interval_id`` that differ."""
GROUP_BY: Final = ("account", "usage_type", "day", "region")
"""Keys ``report`` can group by."""
FORMATS: Final = ("table", "csv", "json")
"""Output formats of ``report``."""
