"""One module per signing mode (the model_signing layout): each builds model_signing's signing configuration and
says what it is, for the provenance. Chosen by ``signing.mode`` in the policy; see :func:`airlock.modelsign.signer`.
A new mode goes here as one file with a class that has ``configure(config)`` and ``describe()``."""
