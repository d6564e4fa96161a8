"""The web console: one HTML page with its script and style sheet, shipped in the package.

`router` serves them at `GET /console` and `GET /console/static/{name}`; the page reads the gateway's
JSON APIs from the browser. The guard asks for an admin key on every `/console` path.
"""
