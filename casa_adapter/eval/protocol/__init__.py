"""Evaluation protocols (`casa-adapter eval --protocol NAME --task BENCHMARK`).

- `presets`: `Protocol` (prompt suffix, answer clean-up, metric per benchmark), `KYUTAI`, `get_protocol`;
- `lmms_scores`: per-question scores as lmms-eval's tasks compute them (ChartQA, DocVQA / InfoVQA, TextVQA).
"""

from casa_adapter.eval.protocol.presets import KYUTAI, PROTOCOLS, Protocol, get_protocol, protocol_metrics

__all__ = ["KYUTAI", "PROTOCOLS", "Protocol", "get_protocol", "protocol_metrics"]
