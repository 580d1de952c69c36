"""The daemon's side: the Redis process, its supervisor, and what other processes call.

The client side (``Town``, ``Channel``) imports one module from here, :mod:`control`,
and only to start a daemon; ``control`` loads no process code of its own.
"""
