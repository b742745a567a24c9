def run_worker(loglevel=None):
    raise NotImplementedError
