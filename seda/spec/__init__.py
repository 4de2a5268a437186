"""What a user declares: the pydantic models, YAML and Python graph files with
line numbers, topology checks (networkx), the builder, drawings. Never imported by a
child process."""
