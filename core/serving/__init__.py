"""Serving predictions: which file a model name means, loading it, batching calls, tensors in JSON.

- `catalog`: model ids and names, versions and labels, resolved from job manifests.
- `signature`: a servable's tensors, the id ranges its layers need, a checked batch.
- `cache`: loaded models (a compiled forward function each) in a per-process LRU.
- `batcher`: concurrent requests for one model gathered into one forward pass.
- `tfserving`, `oip`: request bodies (TF Serving's REST dialect, the Open Inference Protocol) to
  checked batches, and outputs back.
- `export`: the SavedModel download.
"""
