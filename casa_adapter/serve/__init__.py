"""Serving (issue 14, in progress): the HTTP side of `casa-adapter serve`.

- `settings.ServeSettings`: the server's limits and defaults.
- `requests`: OpenAI chat bodies and video-session calls checked and decoded (`ServeError` with a 4xx).
- `images`: `data:` URIs (and allowed remote URLs) -> RGB arrays within the byte and pixel limits.

The model side (one `StreamBatch` stepping every session) and the LitServe server come next.
"""
