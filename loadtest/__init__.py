"""HTTP drivers of the live service: locust, live replay, chaos, fuzz."""
