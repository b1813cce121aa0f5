"""The docs stay runnable and in step with the code.

Every ```python block of the docs below runs in a fresh namespace, inside a temporary working
directory, with the global RNG state restored afterwards. A block is skipped when the line
before it (blank lines aside) is `<!-- no-test -->`. Blocks of the docs in `SELF_CONTAINED_ONLY`
run only when they are self-contained (every name they read is imported or assigned in the
block); the others are reported as skipped with the missing names. A few checks tie tables in
the docs to the code they describe.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    "docs/architecture.md",
    "docs/adding-a-family.md",
    "docs/families.md",
    "docs/checkpoints.md",
    "docs/evaluation.md",
    "docs/kernels.md",
    "docs/serving.md",
    "docs/variants.md",
]
SELF_CONTAINED_ONLY = ["docs/vision.md", "docs/processor.md"]
NO_TEST = "<!-- no-test -->"


@dataclasses.dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    code: str
    no_test: bool

    @property
    def id(self) -> str:
        return f"{Path(self.doc).name}:{self.line}"


def code_blocks(path: Path, lang: str = "python", doc: str | None = None) -> list[Block]:
    """Fenced ```lang blocks of a markdown file (indented fences in lists included, dedented)."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() != f"```{lang}":
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        blocks.append(Block(doc or str(path), start + 1, textwrap.dedent("\n".join(body)) + "\n", before == NO_TEST))
        i += 1
    return blocks


def free_names(code: str) -> set[str]:
    """Names a block reads but never binds (imports, assignments, defs, arguments, targets) nor gets from builtins."""
    tree = ast.parse(code)
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins)) - {"__name__", "__file__"}


def _all_blocks() -> list[Block]:
    found = []
    for doc in DOCS + SELF_CONTAINED_ONLY:
        path = ROOT / doc
        if path.exists() or doc in DOCS:
            found += code_blocks(path, doc=doc)
    return found


BLOCKS = _all_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs(block: Block, tmp_path, monkeypatch):
    if block.no_test:
        pytest.skip(f"marked {NO_TEST}")
    missing = free_names(block.code)
    if missing and block.doc in SELF_CONTAINED_ONLY:
        pytest.skip(f"not self-contained (uses {sorted(missing)}); make it so or mark it {NO_TEST}")
    assert not missing, f"{block.id} uses names it never defines: {sorted(missing)}"
    monkeypatch.chdir(tmp_path)
    with torch.random.fork_rng(devices=[]):
        exec(compile(block.code, f"{block.doc}:{block.line}", "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("doc", DOCS)
def test_owned_docs_have_runnable_blocks(doc):
    runnable = [b for b in code_blocks(ROOT / doc) if not b.no_test]
    assert runnable, f"{doc}: no runnable python block found (is the fence syntax right?)"


def test_block_parser(tmp_path):
    md = tmp_path / "x.md"
    md.write_text(
        "text\n```python\na = 1\n```\n<!-- no-test -->\n\n```python\nb\n```\n"
        "1. item\n\n   ```python\n   c = 2\n   ```\n```json\n{}\n```\n"
    )
    blocks = code_blocks(md)
    assert [(b.line, b.code, b.no_test) for b in blocks] == [
        (2, "a = 1\n", False),
        (7, "b\n", True),
        (12, "c = 2\n", False),
    ]
    assert free_names("import torch\nx = torch.ones(1)\ndef f(y): return y + z\n") == {"z"}


def _key_tree(obj):
    if isinstance(obj, dict):
        return {k: _key_tree(v) for k, v in obj.items()}
    return type(obj).__name__ if obj is not None else None


def test_manifest_example_matches_a_real_manifest(tmp_path):
    """The example in docs/checkpoints.md is what save_adapter writes for the setup it describes."""
    import casa_adapter

    from conftest import tiny_llm, tiny_tower

    (doc,) = code_blocks(ROOT / "docs/checkpoints.md", lang="json")
    shown = json.loads(doc.code)
    model = casa_adapter.wrap(
        tiny_llm("llama"),
        vision=tiny_tower(),
        every=2,
        train_marker=True,
        lora=casa_adapter.LoraSettings(rank=4, targets=["q_proj", "v_proj"]),
    )
    model.save_adapter(tmp_path / "a")
    real = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert _key_tree(shown) == _key_tree(real)
    for key in ("format", "format_version", "casa", "vision", "lora"):
        assert shown[key] == real[key], key
    assert shown["trainable"]["counts"] == real["trainable"]["counts"]
    assert {k: v for k, v in shown["base_model"].items() if k != "fingerprint"} == {
        k: v for k, v in real["base_model"].items() if k != "fingerprint"
    }
    for section in ("trainable", "tensors"):  # the doc cuts the name lists; what it shows must be real
        assert set(shown[section]["names"]) <= set(real[section]["names"]), section
    assert len(real["trainable"]["names"]) == 27  # "27 in the file"


def test_family_doc_matches_the_code():
    from casa_adapter.backbone import families

    text = (ROOT / "docs/adding-a-family.md").read_text()
    for model_type in families.FAMILIES:
        assert f"| `{model_type}` |" in text, f"{model_type} missing from the family table"
    for field in dataclasses.fields(families.FamilySpec):
        assert f"`{field.name}`" in text, f"FamilySpec.{field.name} not documented"
    from casa_adapter.backbone import discover

    for name in (*discover.BLOCK_PATHS, *discover.ATTENTION_NAMES, *discover.OUT_NAMES):
        assert f"`{name}`" in text, f"fallback name {name} not documented"


def test_trainable_groups_documented():
    import casa_adapter

    from conftest import tiny_llm, tiny_tower

    text = (ROOT / "docs/architecture.md").read_text()
    groups = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower()).trainable_groups()
    for group in groups:
        assert f"| `{group}` |" in text, f"trainable group {group} missing from docs/architecture.md"
