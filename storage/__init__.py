"""storage: the Parquet side of metering (I/O around the pure core in :mod:`metering`).

* :mod:`storage.layout`: names of the dataset layout and of the batch commands' choices
  (no imports: the command line reads it without loading pyarrow);
* :mod:`storage.dataset`: the Arrow schema, tables, atomic part-file writes, directory locks;
* :mod:`storage.replay`: the batch runner (read input files, drive the core, write the dataset);
* :mod:`storage.archive`: the archive's Parquet parts and checkpoint;
* :mod:`storage.compact`: one file per closed day, deduplicated;
* :mod:`storage.report`: usage totals read from a dataset;
* :mod:`storage.gctune`: garbage-collector tuning for bulk runs.

This package parses no command line and writes nothing to stdout or stderr; the command
line lives in :mod:`agents`. Importing ``storage`` itself loads nothing heavy.
"""
