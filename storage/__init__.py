"""storage: the Parquet side of metering (I/O around the pure core in :mod:`metering`).

* :mod:`storage.layout`: names of the dataset layout and of the batch commands' choices
  (no imports: the command line reads it without loading pyarrow);
* :mod:`storage.parts`: the one naming and atomic-write policy of part files (replay,
  archive and compacted parts);
* :mod:`storage.dataset`: the Arrow schema, tables, reading a dataset, directory locks;
* :mod:`storage.replay`: the batch runner (read input files, drive the core, write the dataset);
* :mod:`storage.archive`: the archive's Parquet parts and checkpoint;
* :mod:`storage.compact`: one file per closed day, deduplicated;
* :mod:`storage.report`: usage totals read from a dataset;
* :mod:`storage.gctune`: garbage-collector tuning for bulk runs;
* :mod:`storage.errors`: the storage errors (under :class:`metering.errors.MeteringError`).

This package parses no command line and writes nothing to stdout or stderr (results are
plain values, progress goes to callbacks); the command line lives in :mod:`agents.cli`.
Importing ``storage`` itself loads nothing heavy (tests/unit/test_layering.py).
"""
