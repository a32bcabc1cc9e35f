"""In-memory fakes of the services' ports, for unit tests of the use cases (no I/O)."""
