"""Block pruning for ditkit DiTs (SANA 1.5, Xie et al. 2025, Sec. 2.3; Razzhigaev et al.,
ACL 2024, Sec. 5): pick K whole blocks by a score, remove them (or replace them by a
fitted token-wise linear map), recover with a short fine-tune that distils the
original model's velocity, save a smaller self-describing checkpoint.

    from ditkit.accel.prune import prune_model
    result = prune_model("shapes-64", remove=2, by="influence", tune_steps=500, out_dir="pruned")

Scores (ditkit.analysis.linearity): `influence` removes the blocks whose output is most
similar to their input; `linearity` the most linear ones; `ablation` the ones
whose removal raises the validation flow-matching loss least (measured, so
the most faithful and the slowest); `benchmark` screens sets of blocks by the
dataset's own benchmark.

One job per module:
- calibration: the fixed held-out batches, validation loss, calibration prompts;
- surgery: removing blocks, linear stand-ins and fitting them;
- selection: choosing blocks (scores, ablation, the benchmark screen) and the ablation truth;
- recovery: recovery tuning and teacher trajectories;
- recipe: prune_model, the whole recipe for a ditkit model folder;
- diffusers: the same for a diffusers transformer folder.
"""

from ditkit.accel.prune.calibration import default_calibration_prompts, fixed_batches, validation_loss
from ditkit.accel.prune.diffusers import diffusers_ablation, prune_diffusers, remove_diffusers_blocks
from ditkit.accel.prune.recipe import prune_model
from ditkit.accel.prune.recovery import DEFAULT_RECOVERY, RECOVERY_TIMES, recovery_tune, teacher_trajectories
from ditkit.accel.prune.selection import (EXPECTED_SIGN, PRUNE_SELECTORS, SELECTORS, ablation_effects, ablation_losses,
                                          benchmark_score, benchmark_screen, block_scores, plot_ablation,
                                          rank_correlations, removable_order)
from ditkit.accel.prune.surgery import (LinearMaps, block_io_rows, check_k, check_remove, fit_linear_maps,
                                        remove_blocks, skipping, solve_affine)

_fixed_batches = fixed_batches  # its former private name, which research/standin_fits.py and standin_r2.py import

__all__ = [
    "DEFAULT_RECOVERY", "EXPECTED_SIGN", "PRUNE_SELECTORS", "RECOVERY_TIMES", "SELECTORS", "LinearMaps",
    "ablation_effects", "ablation_losses", "benchmark_score", "benchmark_screen", "block_io_rows", "block_scores",
    "check_k", "check_remove", "default_calibration_prompts", "diffusers_ablation", "fit_linear_maps",
    "fixed_batches", "plot_ablation", "prune_diffusers", "prune_model", "rank_correlations", "recovery_tune",
    "remove_blocks", "remove_diffusers_blocks", "removable_order", "skipping", "solve_affine",
    "teacher_trajectories", "validation_loss",
]
