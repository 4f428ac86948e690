"""The I/O bindings: the only places in the package that touch sockets, files or clocks."""
