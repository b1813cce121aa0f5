"""`casa-adapter families [--census] [--doc PATH] [TYPE ...]`: the family table, and the census.

Without `--census` it lists the `FamilySpec` table entries. With it, it runs the census checks on
every causal-LM type (or the types named), prints the table, and writes it into `docs/families.md`
(`--doc`; `--no-doc` to skip).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="casa-adapter families", description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", help="model types to check (default: every causal-LM type)")
    parser.add_argument("--census", action="store_true", help="build, wrap and check each type on a tiny base")
    parser.add_argument("--doc", type=Path, default=Path("docs/families.md"), help="where to write the table")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if not args.census:
        from casa_adapter.backbone.families import FAMILIES

        for model_type, entry in FAMILIES.items():
            print(f"{model_type:20s} {entry if not callable(entry) else f'{entry.__name__}(config)'}")
        return 0
    from casa_adapter.census.report import run_census, table, write_families_doc

    outcomes = run_census(args.types or None, lambda o: print(f"{o.status:12s} {o.model_type}", file=sys.stderr))
    print(table(outcomes))
    if not args.no_doc and not args.types:
        write_families_doc(outcomes, args.doc)
        print(f"wrote {args.doc}", file=sys.stderr)
    return 1 if any(o.status == "crash" for o in outcomes) else 0


__all__ = ["main"]
