"""The Ray Serve application (app.py), its configs, the correction page and the load test."""
