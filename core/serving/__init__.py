"""Serving predictions: which file a model name means, loading it, batching calls, tensors in JSON.

- `catalog`: model ids and names, versions and labels, resolved from job manifests.
- `cache`: loaded models (a compiled forward function each) in a per-process LRU.
- `batcher`: concurrent requests for one model gathered into one forward pass.
- `tensors`: request bodies (TF Serving and Open Inference Protocol) to checked arrays and back.
- `export`: the SavedModel download.
"""
