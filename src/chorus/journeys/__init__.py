"""journeys: automations that react to what a person does on any channel, wait, branch and speak (issue 13).

``definition`` parses and validates journeys (JSON, or YAML in files) into immutable nodes; ``interpreter`` is the
one pure interpreter, ``step(definition, state, input, ctx) -> (state, commands)``, and ``enter`` decides entry and
re-entry. The runtime on the store, the HTTP API, the CLI, broadcasts and the simulator build on these two.
"""
