"""The ``stepmail`` command: scenarios and templates kept as files, applied through the APIs."""
