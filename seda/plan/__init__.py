"""From a checked spec and a server model to a deployment: which processes run which
stages, where, as plain data the children read; run folders."""
