"""The systemd template, shipped inside the package as ``tinytownd.systemd``."""
