"""A recommended ranking learned from the team's own ground truth (pure: frames in, numbers out).

Inputs: a per-pair frame (one row per (model, target): ``model``, ``target``, ``family``,
``capacity`` (parameter count), one column per metric's mean score, and SEG-OTCE's ``w_d`` /
``w_t`` means where present) and the ground truth per pair (``model``, ``target``, ``value``).

Candidates
----------
``<metric>``                  the metric's own score, oriented higher-is-better (no fit).
``<metric>+family+capacity``  least squares of g − mean_t(g) on
                              [z_t(metric), one-hot(family), log10(capacity) − its mean],
                              z_t = per-target z-score (ddof 0; 0 where the target's scores
                              are constant); min-norm solution when columns are collinear.
``otce_form``                 the CVPR'21 form λ1·W_D + λ2·W_T + b: least squares of
                              g − mean_t(g) on the per-target centred W_D and W_T (b is the
                              per-target mean, irrelevant to a ranking within a target).
``rank_average``              the mean over metrics of each metric's per-target average rank
                              (oriented, scaled to [0, 1]); no fit.

Judging: leave-one-target-out (LOTO). For each target t, fit on the pairs of the other targets,
score t's models, and measure Pearson r, weighted τ (Vigna, scipy defaults) and top-1 regret
(max g − g[argmax score], ground-truth units) against t's ground truth; report the mean over
the held-out targets (NaN-ignoring).

Selection rule (fixed before any real score was looked at)
----------------------------------------------------------
For each candidate and each held-out target t, its **utility** is

    u_t = ½ · weighted_τ_t + ½ · clip(1 − regret_t / random_regret_t, −1, 1)

where random_regret_t = mean over t's models of (max g − g) is the expected top-1 regret of
a random ranking (a target where it is 0, all models equal, contributes its weighted τ term
only; an undefined weighted τ contributes its regret term only: u_t is then that one term,
the mean of the defined halves). Both halves are 0 for a random ranking and 1 for a perfect
one, so neither top-1 regret nor the ranking quality as a
whole can be ignored, and Pearson (sensitive to one outlier model) does not enter the choice.
The **chosen** candidate has the highest mean utility over the held-out targets (NaN-ignoring;
a candidate with no defined utility is not eligible). Ties (within 1e-9) go to the lower mean
regret, then the higher mean weighted τ, then the candidate with fewer fitted parameters
(no fit < otce_form < metric+family+capacity), then the name.

The chosen candidate's evidence is **nested**: for each held-out target t, the rule above is
applied again using only the other targets (an inner LOTO on them), and t is scored by the
candidate chosen there, refitted on all the other targets. These nested figures (``loto``'s
``recommended`` entry) are the honest ones; the chosen candidate's own LOTO figures are
flattered by having been picked on the same folds.
"""
