"""Real trained denoisers on natural image patches: do the toolkit's closed-form objectives predict real quality?

One idea per module: `data` (patches, split, dequantization, spectrum), `models` (MLP denoisers and their
heads), `train` (regenerates the shipped weights), `sampling` (the DDIM loop), `grids` (the candidate
registry), `predict` (closed-form objectives, model-aware propagation), `error_profile` (per-step denoiser
errors), `metrics` (path error, Fréchet distances, paired bootstrap), `report` (tables), `run` (the benchmark).
See README.md in this folder.
"""
