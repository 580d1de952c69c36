"""The launchd template, shipped inside the package as ``tinytownd.launchd``."""
