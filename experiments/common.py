"""The experiments' shared parts under one name, so that a script reads ``common.train``, ``common.Outcome``, ...:
nothing is defined here. Each name lives in its module:

    runs.py          the design (DESIGN), run configs, training, reusing and resuming runs, baselines' weights
    evaluation.py    the evaluation split, the evaluator (feature net, reference set), sampling in batches and draws
    measures.py      distribution metrics in draws, the FID curve, conditional, ELBO, paired and curve measures
    results.py       Outcome, the result JSON and its provenance, sample grids
    restoration.py   the restoration benchmark (masked inputs of the evaluation split, PSNR/SSIM)
    cli.py           the command line every experiment script shares
"""

from __future__ import annotations

from experiments.cli import KeysFn, RunFn, main, parse_setting, run_experiment
from experiments.evaluation import (DRAW_SEED_OFFSET, EVALUATION, NFE_SPENT, SPLITS, VAL_SEED_OFFSET, Evaluator,
                                    base_protocol, check_split, draw_protocol, drawn, generate_batched, joint_samples,
                                    make_evaluator, record_nfe, sampler_protocol, split_tensors, split_view)
from experiments.measures import (CONDITIONAL_KEYS, CURVE_KEYS, DISTRIBUTION_KEYS, DRAWN_KEYS, ELBO_KEYS,
                                  Distribution, conditional_measures, curve_metrics, distribution_metrics,
                                  elbo_bits_per_dim, encoding_measures, fid_curve, fid_infinity, learning_curve,
                                  paired_metrics)
from experiments.restoration import (RESTORATION_PROTOCOL, RestoreFn, ratio_tag, restoration, restoration_keys,
                                     restoration_scores, restoration_set)
from experiments.results import (DEFAULT_RESULTS, RESULT_FORMAT, Outcome, command_line, hardware, provenance,
                                 result_path, save_grid, save_rows, write_result)
from experiments.runs import (DEFAULT_WORK, DESIGN, EVALUATION_ONLY, REUSE, Trained, TrainedOnly, TrainingInterrupted,
                              aggregated, check_data,
                              count_parameters, device_of, image_modality, optimizer_step, run_config, train,
                              trained_module)

__all__ = [
    "CONDITIONAL_KEYS", "CURVE_KEYS", "DEFAULT_RESULTS", "DEFAULT_WORK", "DESIGN",
    "DISTRIBUTION_KEYS", "DRAWN_KEYS", "DRAW_SEED_OFFSET", "ELBO_KEYS", "EVALUATION", "EVALUATION_ONLY",
    "NFE_SPENT", "RESTORATION_PROTOCOL", "RESULT_FORMAT", "REUSE", "SPLITS",
    "VAL_SEED_OFFSET", "Distribution", "Evaluator", "KeysFn", "Outcome", "RestoreFn", "RunFn",
    "Trained", "TrainedOnly", "TrainingInterrupted", "aggregated", "base_protocol", "check_data", "check_split",
    "command_line", "conditional_measures", "count_parameters", "curve_metrics", "device_of",
    "distribution_metrics", "draw_protocol", "drawn", "elbo_bits_per_dim", "encoding_measures", "fid_curve",
    "fid_infinity", "generate_batched", "hardware", "image_modality", "joint_samples", "learning_curve", "main",
    "make_evaluator", "optimizer_step", "paired_metrics", "parse_setting", "provenance", "ratio_tag",
    "record_nfe", "restoration", "restoration_keys", "restoration_scores", "restoration_set", "result_path",
    "run_config", "run_experiment", "sampler_protocol", "save_grid", "save_rows", "split_tensors", "split_view",
    "train", "trained_module", "write_result",
]
