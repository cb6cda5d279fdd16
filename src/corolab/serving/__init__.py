"""The serving stack: an OpenAI-compatible LLM server, layered top-down.

``server`` (HTTP, SSE, websocket) → ``protocol`` (the wire's shapes) → ``engine`` (scheduling) →
``backends`` (models). ``config`` holds every setting and its default; ``params`` the sampling parameters
the engine takes. Nothing here imports ``corolab.teach``, ``corolab.bench`` or ``corolab.labs``.
"""
