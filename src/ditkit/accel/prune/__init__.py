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

Measuring blocks is ditkit.analysis's job, and pruning imports it from there: the fixed
held-out batches, validation loss and calibration prompts (analysis.calibration), removing
and skipping blocks (analysis.surgery), fitting linear stand-ins (analysis.standins) and
the ablation truth (analysis.ablation). They are re-exported here, so
`from ditkit.accel.prune import remove_blocks` keeps working.

One job per module here:
- selection: choosing blocks (scores, the benchmark screen);
- recovery: recovery tuning and teacher trajectories;
- recipe: prune_model, the whole recipe for a ditkit model folder;
- diffusers: the same for a diffusers transformer folder.
"""

from ditkit.accel.prune.diffusers import diffusers_ablation, prune_diffusers, remove_diffusers_blocks
from ditkit.accel.prune.recipe import prune_model
from ditkit.accel.prune.recovery import DEFAULT_RECOVERY, RECOVERY_TIMES, recovery_tune, teacher_trajectories
from ditkit.accel.prune.selection import (PRUNE_SELECTORS, SELECTORS, benchmark_score, benchmark_screen, block_scores,
                                          check_k, removable_order)
from ditkit.analysis.ablation import (EXPECTED_SIGN, ablation_effects, ablation_losses, plot_ablation,
                                      rank_correlations)
from ditkit.analysis.calibration import default_calibration_prompts, fixed_batches, validation_loss
from ditkit.analysis.standins import block_io_rows, fit_linear_maps, solve_affine
from ditkit.analysis.surgery import LinearMaps, check_remove, remove_blocks, skipping

__all__ = [
    "DEFAULT_RECOVERY", "EXPECTED_SIGN", "PRUNE_SELECTORS", "RECOVERY_TIMES", "SELECTORS", "LinearMaps",
    "ablation_effects", "ablation_losses", "benchmark_score", "benchmark_screen", "block_io_rows", "block_scores",
    "check_k", "check_remove", "default_calibration_prompts", "diffusers_ablation", "fit_linear_maps",
    "fixed_batches", "plot_ablation", "prune_diffusers", "prune_model", "rank_correlations", "recovery_tune",
    "remove_blocks", "remove_diffusers_blocks", "removable_order", "skipping", "solve_affine",
    "teacher_trajectories", "validation_loss",
]
