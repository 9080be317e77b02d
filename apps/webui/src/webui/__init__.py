"""YuRen's web UI: chat with text and images in the browser, safe to expose (``webui --help``)."""
