"""casa_adapter as an lmms-eval model (`pip install 'casa-adapter[lmms]'`, then `lmms-eval --model casa_adapter`).

Nothing here is imported by `import casa_adapter`; only `model` imports lmms-eval.

- `manifest`: the `lmms_eval.models` entry point (`ModelManifest` of `CasaLmms`);
- `model`: `CasaLmms`, lmms-eval's `generate_until` / `loglikelihood` over a casa_adapter model;
- `settings`: `LmmsSettings`, the `--model_args`;
- `prompts`: a request's text and visuals (images, image paths, videos) -> user message and images;
- `video`: frames of a video file, sampled as the data pipeline samples a video;
- `likelihood`: summed log-probabilities of continuations, batched.
"""
