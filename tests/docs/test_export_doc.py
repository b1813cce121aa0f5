"""docs/export.md runs as written, top to bottom in one empty folder, and each command leaves its form behind."""

from test_docs import ROOT
from test_guide import run_page


def test_export_page_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran, _ = run_page(ROOT / "docs" / "export.md", tmp_path)
    assert ran["python"] >= 4 and ran["bash"] >= 1
    exports = tmp_path / "exports"
    assert (exports / "cli-merged" / "model.safetensors").is_file()
    assert (exports / "cli-peft" / "adapter_config.json").is_file()
    assert (exports / "cli-text" / "config.json").is_file() and (exports / "cli-adapter" / "manifest.json").is_file()
    assert (exports / "merged-form" / "README.md").read_text().startswith("---\nlibrary_name: casa-adapter")
