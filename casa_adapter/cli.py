"""The `casa-adapter` console script.

Subcommand groups are dispatched here; each group lives with the code it drives:
`data ...` in `casa_adapter.data.commands`, `bench ...` in `casa_adapter.bench.commands`.
"""

from __future__ import annotations

import sys

USAGE = """usage: casa-adapter COMMAND [ARGS]

commands:
  data      data tools: check shards, convert LLaVA json / image folders, make the demo set
            (casa-adapter data --help)
  bench     CASA vs token insertion, side by side: stream, train, kernel
            (casa-adapter bench --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "data":
        from casa_adapter.data.commands import main as data_main

        return data_main(rest)
    if command == "bench":
        from casa_adapter.bench.commands import main as bench_main

        return bench_main(rest)
    print(f"casa-adapter: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
