"""The model registry: a staging area the pipeline writes, and a production area only promotion writes.

See :mod:`registry.store` for the layout and the security rules.
"""

from registry.store import Registry, StagedModel

__all__ = ["Registry", "StagedModel"]
