"""The method: bandit, pacer, costs, priors, the model registry and the Router over them."""
