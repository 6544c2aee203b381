"""Scaling-law studies: a family of reward-model sizes, sweeps over size and compute, power-law
fits and their plots.

    python -m polar_jax scaling --config configs/scaling/cpu_synthetic.py --workdir runs/scaling_cpu

`sizes` (the size family, its depth/width rule, the paper's LR and batch fits), `fit` (power
laws in log space with R^2, the compute-optimal frontier), `sweep` (the sweep's driver: resolve, run
or print, resume, collect, write scaling.csv / fit.json; its steps are `planning`, `run_state`, `running`,
`results` and `report`), `plots` (matplotlib, Agg backend).
"""
