"""The example trainer: a small CNN on scikit-learn's bundled digits.

A forking team replaces this package. Its contract with Airlock (see docs/forking.md):

* ``python -m training.train --data DIR --out DIR`` is run from a clean export of the verified commit, in a
  sandbox (airlock/sandbox.py): no network, no signing key, approval key or token, a read-only filesystem but for
  ``--out`` and a private ``/tmp``, and nothing survives it. It reads ``train_x.npy`` / ``train_y.npy`` from
  ``--data`` and writes exactly two files into ``--out``: ``model.safetensors`` and ``training.json``
  (hyperparameters, preprocessing steps, seed, library versions, input shape, classes). Anything it needs (a
  pretrained base model, a tokenizer) must be in the commit or in the Python environment: it can download nothing.
* ``training.model.build_model(hyperparameters) -> torch.nn.Module`` rebuilds the architecture. It is imported
  only inside the model oracle's sandbox, which answers the evaluator's questions (logits, input gradients, the
  ``penultimate`` module's activations); safetensors only: no pickle ever crosses the boundary.
"""
