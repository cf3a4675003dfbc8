"""Rewrite the usage interval's schema files from its one definition.

``python -m tools.gen_schemas`` (from the repository root) writes
``schemas/usage-interval.schema.json`` and ``schemas/usage-interval.avsc`` from
:data:`metering.usage_schema.INTERVAL_FIELDS`; ``--check`` writes nothing and exits 1 when a
file differs (``tests/contract/test_schemas.py`` checks the same). Edit the definition, never
the files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metering.usage_schema import SCHEMA_FILES

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gen_schemas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="only report files that differ from the definition (exit 1)")
    parser.add_argument("--dir", type=Path, default=SCHEMAS, help="schemas directory")
    args = parser.parse_args(argv)
    stale = []
    for name, text in SCHEMA_FILES.items():
        path = args.dir / name
        wanted = text()
        if path.exists() and path.read_text(encoding="utf-8") == wanted:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(wanted, encoding="utf-8")
    verb = "differs from the definition" if args.check else "rewritten"
    for path in stale:
        print(f"{path}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
