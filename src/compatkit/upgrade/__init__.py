"""Upgrading a deployed embedding model without re-indexing its gallery.

The workflow of a retrieval service, on top of the library (one sub-package for it, as
``data/`` and ``methods/`` are):

- ``data``: a user's images (an image folder, one sub-folder per class, or a
  registered dataset) as an :class:`~compatkit.data.ImageSet` whose classes
  carry their *names*;
- ``embed``: a checkpoint as an embedding function (its normalisation, input
  size and class names travel with it);
- ``train``: ``compatkit train``, a first model on one's data, or its
  successor trained against the frozen old model, every class the old model
  knows kept on its vertex by name;
- ``gate``: ``compatkit check``, the upgrade gate that says whether the new
  model may query a gallery embedded by the old one;
- ``index`` and friends: the versioned gallery in a vector database (``store``:
  LanceDB, Milvus), the compatibility records kept with it (``ledger``), build,
  gated search, partial backfill (``policies``, ``backfill``) and its curve.

Submodules are imported on use, so ``import compatkit.upgrade`` stays cheap.
"""
