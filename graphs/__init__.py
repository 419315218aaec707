"""The application builder: binds the deployments into the Serve graph."""
