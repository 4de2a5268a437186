"""The process shells (IO only): the mailbox every data-plane process shares, workers,
the source, the acceptor, mp's processes, listeners, dead letters, the access log."""
