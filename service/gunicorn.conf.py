"""gunicorn settings for the API. The bind address and worker count come from the command line.

gthread workers: predictions are short and mostly in TensorFlow's C++ (which releases the GIL),
and one process per core keeps the model cache per process small. No preload: TensorFlow must
not start in the master and then be forked.
"""

worker_class = "gthread"
threads = 8
preload_app = False
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss request_id=%({x-request-id}o)s'


def post_worker_init(worker) -> None:
    """Import TensorFlow in each worker before it takes requests, so the first predict is fast."""
    import tensorflow  # noqa: F401

    worker.log.info("tensorflow imported pid=%s", worker.pid)
