"""What a user sees of a run: status snapshots, the status server and dashboard,
`seda top`, the progress line."""
