"""The sans-IO core: frames, credit, the stage core, controllers, codecs, the end of a
run and restart intensity. No sockets, no processes, no pydantic; clocks are injected."""
