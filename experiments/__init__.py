"""The paper's experiments at small scale (docs/results.md): one script per setting, presets, make_results."""
