"""`casa-adapter eval`: answer every sample of WebDataset shards with a CASA model, score the answers.

For each sample (image, multi-image or video; the format of docs/data.md) the prompt is the
chat up to its last assistant turn, the references are the json's `answers` (else the last
assistant message); answers are generated greedily in left-padded batches. Predictions are
written as JSONL (`{"id", "question", "answers", "prediction", "qtype"?, "source"}`, the shape
lmms-eval-style tooling reads) and `casa_adapter.metrics` scores are printed overall and per
question type. docs/evaluation.md tells the whole story.

- `settings`: `EvalSettings`;
- `loading`: the model from `--adapter` / `--base` / `--recipe`;
- `samples`: shards -> `EvalSample` (prompt, references), bad samples counted;
- `run`: `evaluate(model, processor, settings)`, the loop (batches, `generate`, JSONL);
- `report`: scores overall and per question type, the table, the results JSON;
- `command`: `main(argv)`, the command line.

    from casa_adapter.eval import main
    main(["--adapter", "runs/demo/adapter/final", "--base", "smollm2-135m", "--shards", "data/demo/val"])
"""

from casa_adapter.eval.command import main
from casa_adapter.eval.run import evaluate
from casa_adapter.eval.settings import EvalSettings

__all__ = ["EvalSettings", "evaluate", "main"]
