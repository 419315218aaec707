"""paretoserve's logic free of Ray: the method, state, encoding, service path, replay."""
