"""The calibration windows' defaults, shared by every entry point that calibrates (`prune`,
`build`, `build --dry-run`, `sweep`, the Python API and their flags): one place, so that a prune
and a build calibrate alike unless told otherwise. Torch-free (the CLI's help reads it)."""
NSAMPLES = 32  # calibration windows (COMP's statistics get noisy below ~1024 tokens: run.request_checks.MIN_CALIB_TOKENS)
SEQ_LEN = 128  # tokens per calibration window
SEED = 0  # which windows are drawn
