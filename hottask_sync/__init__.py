"""hottask-sync: upload every completed file dropped into watched folders to HotTask."""

__version__ = "0.1.0"
