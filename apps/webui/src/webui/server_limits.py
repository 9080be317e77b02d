"""Defaults for what a running server keeps, light enough for the command line to read before Gradio loads.

The per-request limits live in :class:`webui.app.Limits`, which takes these as its defaults.
"""

# Conversations kept in memory (each may hold its prepared images); past it the least recently used is
# forgotten. Gradio's own default, 10,000, lets idle sessions hold gigabytes.
MAX_SESSIONS = 200
# What one client address may upload per minute, and all uploads together may keep on disk.
UPLOAD_RATE = "200mb"
UPLOAD_STORAGE = "2gb"
