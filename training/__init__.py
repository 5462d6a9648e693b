"""The example trainer: a small CNN on scikit-learn's bundled digits.

A forking team replaces this package. Its contract with Airlock (see docs/forking.md):

* ``python -m training.train --data DIR --out DIR`` is run from a clean export of the verified commit, in a
  subprocess whose environment carries no signing key, approval key or token. It reads ``train_x.npy`` /
  ``train_y.npy`` from ``--data`` and writes exactly two files into ``--out``: ``model.safetensors`` and
  ``training.json`` (hyperparameters, preprocessing steps, seed, library versions, input shape, classes).
* ``training.model.build_model(hyperparameters) -> torch.nn.Module`` rebuilds the architecture so that the
  evaluation gates can load the weights (safetensors only: no pickle ever crosses the boundary).
"""
