"""The service's request path without Ray: HTTP protocol models, settings, ports, decision, chat."""
