"""The documented default tinytown.toml, shipped inside the package as ``tinytownd.data``."""
