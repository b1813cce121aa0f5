"""`casa-adapter study`: the design study (every CASA variant, placement and option, frozen and with
LoRA, token insertion, a text-only control) on one recipe, several seeds, an equal-steps and an
equal-wall-time budget, written up as `docs/results.md` with plots and standard errors.

    casa-adapter study --recipe recipes/study.yaml --minutes 10     # the reported arms, seeds 0,1,2, 200 steps + 10 min
    casa-adapter study --arms casa,insertion --seeds 0 --steps 100 --out /tmp/study.md
    casa-adapter study --report-only            # rewrite the report from finished runs
    casa-adapter study --report-only --partial  # an interim report of the runs finished so far
    casa-adapter study --costs-only --threads 1 # the step costs of the equal-wall-time budget, side by side
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from casa_adapter.study.arms import ARMS, Arm, select
from casa_adapter.study.cost import costs_path, measure_costs
from casa_adapter.study.report import write_report
from casa_adapter.study.runner import StudySettings, missing_runs, read_summaries, run_study


def parser() -> argparse.ArgumentParser:
    defaults = StudySettings()
    p = argparse.ArgumentParser(
        prog="casa-adapter study",
        description=(
            "Train every arm of the fidelity study from one recipe with the same budget, evaluate each with "
            "`casa-adapter eval`, and write a Markdown report with tables and PNG plots (docs/results.md)."
        ),
    )
    p.add_argument("--recipe", default=defaults.recipe, help="shared recipe (default: %(default)s)")
    p.add_argument(
        "--arms",
        default=",".join(defaults.arms),
        help=f"comma-separated arms from {', '.join(ARMS)} (default: the reported study, {len(defaults.arms)} arms)",
    )
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per arm (default: %(default)s)")
    p.add_argument("--seeds", default=",".join(map(str, defaults.seeds)), help="comma-separated (default: %(default)s)")
    p.add_argument(
        "--minutes",
        type=float,
        default=defaults.minutes,
        help="also train every arm and seed this many minutes (the equal-wall-time table; default: off)",
    )
    p.add_argument(
        "--resume-every",
        type=int,
        default=defaults.resume_every,
        help="training runs write a resume checkpoint every N steps; a run the study was stopped in continues from "
        "it when the study is started again (0: a stopped run starts over; default: %(default)s)",
    )
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=defaults.snapshot_every,
        help="with --minutes: equal-steps runs save their adapter every N steps, and a time run of no more steps is "
        "evaluated on the nearest snapshot instead of training again (0: always train; default: %(default)s)",
    )
    p.add_argument(
        "--val-every", type=int, default=defaults.val_every, help="steps between validations (default: %(default)s)"
    )
    p.add_argument("--base", help="base LLM instead of the recipe's (e.g. tiny)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="recipe override for every arm, e.g. data.init_args.settings.batch_size=8 (repeatable)",
    )
    p.add_argument(
        "--work",
        default=defaults.work,
        help="per-run work folders: recipes, logs, adapters, resume checkpoints (default: %(default)s)",
    )
    p.add_argument(
        "--out", default=defaults.out, help="report path; plots go to results/ beside it (default: %(default)s)"
    )
    p.add_argument(
        "--records",
        help="folder of the runs' summaries and the step costs, what the report is made from "
        "(default: results/records beside --out)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads of each run (OMP_NUM_THREADS; 1 keeps a shared machine from oversubscribing)",
    )
    p.add_argument(
        "--costs-only",
        action="store_true",
        help="only measure the arms' step costs side by side (RECORDS/costs.json, the equal-wall-time budgets)",
    )
    p.add_argument(
        "--cost-rounds",
        type=int,
        default=defaults.cost_rounds,
        help="rounds of the side-by-side cost measurement (default: %(default)s)",
    )
    p.add_argument(
        "--cost-steps",
        type=int,
        default=defaults.cost_steps,
        help="timed steps per arm and round (default: %(default)s)",
    )
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from the records")
    p.add_argument(
        "--partial",
        action="store_true",
        help="with --report-only: report the runs finished so far and name the missing ones (an interim report)",
    )
    p.add_argument("--quiet", action="store_true", help="children's output to WORK/ARM/train.log and eval.log")
    return p


def parse_overrides(items: list[str]) -> dict:
    """["a.b=1", "c=x"] -> {"a.b": 1, "c": "x"} (values read as YAML)."""
    out = {}
    for item in items:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--set {item!r}: expected PATH=VALUE")
        out[path] = yaml.safe_load(value)
    return out


def main(argv: list[str]) -> int:
    """Entry point of `casa-adapter study ARGS...`; returns the exit status (2: a usage or input error)."""
    args = parser().parse_args(argv)
    try:
        settings = StudySettings(
            recipe=args.recipe,
            arms=args.arms.split(","),
            steps=args.steps,
            seeds=[int(x) for x in args.seeds.split(",")],
            minutes=args.minutes,
            snapshot_every=args.snapshot_every,
            resume_every=args.resume_every,
            val_every=args.val_every,
            base=args.base,
            overrides=parse_overrides(args.overrides),
            work=args.work,
            out=args.out,
            records=args.records,
            quiet=args.quiet,
            threads=args.threads,
            cost_rounds=args.cost_rounds,
            cost_steps=args.cost_steps,
        )
        if args.costs_only:
            costs = measure_costs(settings, yaml.safe_load(Path(settings.recipe).read_text()), select(settings.arms))
            for name, row in costs["arms"].items():
                print(f"{name}: {row['median']:.2f} s/step")
            print(f"costs written to {costs_path(settings)}")
            return 0
        if args.partial and not args.report_only:
            raise ValueError("--partial goes with --report-only (a study run reports every run it was asked for)")
        summaries = read_summaries(settings, args.partial) if args.report_only else run_study(settings)
        missing = missing_runs(settings) if args.partial else []
    except (ValueError, FileNotFoundError) as e:
        print(f"casa-adapter study: error: {e}", file=sys.stderr)
        return 2
    command = "casa-adapter study " + " ".join(shlex.quote(a) for a in argv if a not in ("--report-only", "--partial"))
    path = write_report(summaries, settings, command.strip(), missing)
    print(f"report written to {path}")
    return 0


__all__ = ["ARMS", "Arm", "StudySettings", "main", "run_study", "write_report"]
