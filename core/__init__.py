"""The domain of fitserve: request grammar, datasets, jobs, checkpoints, training, prediction.

Nothing here imports Flask or Celery; TensorFlow is imported only inside the functions that
build, train or run models.
"""
