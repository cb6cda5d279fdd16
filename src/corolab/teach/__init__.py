"""The book's teaching helpers: small, readable pieces that chapters import and show.

``genloop`` and ``classic`` (generator-based event loops and coroutines), ``timeline`` (who ran when, drawn),
``served`` and ``background`` (run a server or a task beside a notebook), ``sample_logs`` (inputs for Part I).
They may use the serving stack; the serving stack never imports them.
"""
