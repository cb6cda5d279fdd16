"""The OpenAI-compatible HTTP and websocket transport (``create_app`` in :mod:`corolab.serving.server.app`)."""
