"""Instruments for the paper's other findings: flatness, complexity, compression, alignment.

ACT's abstract claims "a robust model with lower model complexity, higher information
compression in the learned representations, and high posterior entropy solutions indicative of
convergence to a flatter minima". Each module measures one property with a standard,
documented estimator (docs/analysis.md), on fixed subsets of the data, with the models in eval
mode and fixed keys:

- `objective`: a loss or metric averaged over a fixed subset, data-parallel over the mesh;
- `curvature`: the Hessian's top eigenvalue (Lanczos) and trace (Hutchinson) from
  Hessian-vector products;
- `weight_noise`: filter-normalised perturbations, the loss rise under them, loss landscapes,
  and the PAC-Bayes sharpness sigma;
- `complexity`: the Fisher-Rao norm;
- `representations`: features, effective rank, mutual information by binning, linear CKA;
- `runner`, `report`, `__main__`: `python -m act_jax.analysis` on a run or a study.
"""
