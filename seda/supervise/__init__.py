"""The supervisor: starts the children, feeds the end-of-run and restart state
machines, scales pools, answers `seda ps` / `seda stop`."""
