"""The README figure: Knee against the paper's baselines at the same budget (IWSLT'14 setting).

Run from the repository root: python docs/plot_knee_vs_baselines.py
"""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from knee_plugins import KneeSchedule

T = 50
knee = KneeSchedule.from_durations(T, explore=40)
knee50 = KneeSchedule.from_durations(T, explore_ratio=0.5)
linear = KneeSchedule.from_durations(T, explore=0)
steps = [t / 10 for t in range(T * 10 + 1)]
fig, ax = plt.subplots(figsize=(7, 3.3))
ax.plot(steps, [3e-4 * knee.factor(s) for s in steps], label="Knee (explore 40 of 50 epochs)", lw=2.2)
ax.plot(steps, [3e-4 * knee50.factor(s) for s in steps], label="Knee, 50% explore (no tuning)", lw=1.6, ls="--")
ax.plot(steps, [3e-4 * linear.factor(s) for s in steps], label="linear decay", lw=1.2)
ax.plot(steps, [3e-4 * 0.5 * (1 + math.cos(math.pi * s / T)) for s in steps], label="cosine decay", lw=1.2)
ax.set(xlabel="epoch", ylabel="learning rate", title="IWSLT'14 De-En, 50 epochs, seed LR 3e-4")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("docs/knee_vs_baselines.png", dpi=110)
