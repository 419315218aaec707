"""paretoserve: the method and the service's logic, free of Ray (see ../shared/DESIGN.md, "Layout")."""
