"""The service's request path without Ray: HTTP protocol models and the settings tree."""
