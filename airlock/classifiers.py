"""Torch modules as ART estimators, for the gates that attack or query a model with IBM ART (robustness, the
membership-inference and extraction advisories). The module may be a :class:`airlock.oracle.RemoteModel`, whose
forward and backward are answered by the sandboxed oracle: ART sees an ordinary ``torch.nn.Module``."""

from __future__ import annotations


def art_classifier(model, input_shape, nb_classes: int, clip_values=(0.0, 1.0)):
    """Wrap a torch module for ART. ART's progress bars stay off; import ART before anything configures logging."""
    import torch
    from art.estimators.classification import PyTorchClassifier

    model.eval()
    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=None,
        input_shape=tuple(input_shape),
        nb_classes=int(nb_classes),
        clip_values=tuple(clip_values),
        device_type="cpu",
    )
