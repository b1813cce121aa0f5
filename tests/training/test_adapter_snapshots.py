"""`AdapterCheckpoint`'s schedule: the `every_n_steps` grid pruned to `keep_last`, and `at_steps` always kept."""

from types import SimpleNamespace

from casa_adapter.training.callbacks import AdapterCheckpoint


def _run(callback: AdapterCheckpoint, root, steps: int) -> list[str]:
    trainer = SimpleNamespace(global_step=0, is_global_zero=True)
    for step in range(1, steps + 1):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None)
    return sorted(p.name for p in root.glob("step-*"))


def _fake_save(root):
    def save(trainer, module, name):  # the folder save_adapter would write, without a model
        (root / name).mkdir()
        return root / name

    return save


def test_at_steps_are_written_and_never_pruned(tmp_path):
    callback = AdapterCheckpoint(str(tmp_path), every_n_steps=2, keep_last=1, at_steps=[3, 4])
    callback._save = _fake_save(tmp_path)
    assert _run(callback, tmp_path, 8) == ["step-000003", "step-000004", "step-000008"]  # grid 2, 6 pruned


def test_at_steps_alone_write_nothing_else(tmp_path):
    callback = AdapterCheckpoint(str(tmp_path), at_steps=[5])
    callback._save = _fake_save(tmp_path)
    assert _run(callback, tmp_path, 9) == ["step-000005"]
