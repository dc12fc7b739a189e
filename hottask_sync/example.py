"""The commented starter configuration (`hottask-sync init` writes it; config.example.toml is it)."""

EXAMPLE_CONFIG = """\
# hottask-sync configuration. Every key is shown with its default.
# Check it with:  hottask-sync check --config THIS_FILE

[api]
# Where the HotTask API lives. http:// is allowed only for loopback hosts
# (the local emulator) unless allow_insecure_http = true.
base_url = "https://usapi.hottask.com"
# Seconds to wait for a connection, each read and each write of a call.
timeout_seconds = 30
# The secret key is never written here. It is read, in this order, from:
#   1. the file named by api_key_file (absolute path; whitespace is stripped),
#   2. the environment variable HOTTASK_API_KEY,
#   3. $CREDENTIALS_DIRECTORY/hottask-api-key (systemd LoadCredential=).
# api_key_file = "/etc/hottask-sync/api-key"
allow_insecure_http = false

[sync]
# A file is uploaded once it has been quiet (no event; size, mtime and inode
# unchanged) for this many seconds.
settle_seconds = 2.0
# Uploads running at once (1..64).
concurrency = 4
# Where the ledger (SQLite) lives. Must be on a local disk. Default:
# $STATE_DIRECTORY (systemd StateDirectory=), else $XDG_STATE_HOME/hottask-sync,
# else ~/.local/state/hottask-sync.
# state_dir = "/var/lib/hottask-sync"
# Walk every folder this often (seconds) to catch what inotify missed; 0 = off.
rescan_seconds = 300
# Attempts before a file that keeps getting a permanent error is marked failed
# (transient errors are retried forever).
max_attempts = 5
# On SIGTERM, seconds that running uploads get to finish.
shutdown_grace_seconds = 10
# Bytes per second across all uploads; 0 = no limit.
bandwidth_limit = 0

[logging]
# "auto" (console on a terminal, JSON lines otherwise), "json" or "console".
format = "auto"
# "debug", "info", "warning", "error" or "critical".
level = "info"

[metrics]
# Serve Prometheus metrics on this HOST:PORT, e.g. "127.0.0.1:9464"; "" = off.
listen = ""

# One [[folders]] table per watched folder.
[[folders]]
# Absolute path of the folder to watch.
path = "/srv/hottask/inbox"
# Watch subfolders too.
recursive = true
# Globs on the path relative to the folder. A glob without "/" matches a name at
# any depth ("*.pdf"); with "/" it matches from the folder's root ("scans/**/*.pdf").
# Empty include = every file. Hidden files and partial downloads (*.part, *.tmp,
# *.crdownload, ~$*, ...) are always skipped.
include = []
exclude = []
# What to do with a file once HotTask has it: "keep", "move" (into move_to,
# keeping its relative path, never overwriting) or "delete".
after_upload = "keep"
# Required when after_upload = "move"; outside the folder, or excluded.
# move_to = "/srv/hottask/done"
# Poll instead of inotify (for NFS/SMB shares, which send no events).
poll = false
"""
