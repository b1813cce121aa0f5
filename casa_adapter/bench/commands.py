"""`casa-adapter bench`: CASA and token insertion side by side, in one process, on the same model and inputs.

subcommands:
  stream   a long streamed conversation: per turn, time to first token, decode tokens/s and the
           session state (`model.stream().state_bytes()`), CASA vs insertion
  train    a few optimizer steps on the same frozen backbone and data: training tokens/s and peak
           memory over the loaded model, presets image-heavy and text-heavy
  kernel   the windowed CASA attention kernel vs the dense reference and FLOP-equal causal SDPA
  device   the one prepared GPU check: every kernel vs the reference, kernel/stream/train at paper-like
           sizes on a random ~2B Llama; one JSON + one markdown table (`--quick`: tiny, on CPU)
  serve    many video sessions over real HTTP (`casa-adapter serve`): time to first token per turn,
           answer tokens/s and the server's memory, CASA vs insertion (the one bench in two processes)

Each prints a table with ratios and writes `--json PATH`. Defaults run on a 2-core CPU in under
3 minutes each with the tiny model; `--model smollm2-135m`, `--device cuda --dtype bf16` and
larger sizes scale them up. `casa-adapter bench SUBCOMMAND --help` lists each one's flags;
docs/performance.md has the commands and the measured tables.
"""

from __future__ import annotations

import argparse
import sys

from casa_adapter.bench import device, serve, stream, train
from casa_adapter.bench.common import add_settings_arguments


def build_parser() -> argparse.ArgumentParser:
    intro, rest = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(
        prog="casa-adapter bench",
        description=_summary(intro),
        epilog=rest,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{stream,train,kernel,device,serve}")
    for name, module, settings in (
        ("stream", stream, stream.StreamBenchSettings),
        ("train", train, train.TrainBenchSettings),
        ("device", device, device.DeviceCheckSettings),
        ("serve", serve, serve.ServeBenchSettings),
    ):
        p = sub.add_parser(
            name,
            help=_summary(module.__doc__),
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_settings_arguments(p, settings)
        p.set_defaults(run=module.run)
    sub.add_parser(
        "kernel",
        help="the windowed kernel vs the dense reference and plain SDPA (casa-adapter bench kernel --help)",
        add_help=False,
    )
    return parser


def _summary(doc: str) -> str:
    """The first line of a module docstring, without its "`command`: " lead."""
    return doc.split("\n")[0].split(": ", 1)[-1]


def kernel_main(argv: list[str]) -> int:
    """`bench kernel`: casa_adapter.bench.kernel.main, imported only when asked for."""
    try:
        from casa_adapter.bench.kernel import main
    except ImportError as e:
        if e.name != "casa_adapter.bench.kernel":
            raise
        print(
            "casa-adapter bench kernel: not available in this installation (casa_adapter/bench/kernel.py is "
            "missing); `bench stream` and `bench train` are",
            file=sys.stderr,
        )
        return 2
    return main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "kernel":
        return kernel_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0 if not argv else 2
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
