"""Data files shipped inside the package as ``tinytownd.data``: the documented default
tinytown.toml and the service templates."""
