"""`chorus demo`: a retail brand (``brand``) whose customers follow a seeded behaviour model (``model``,
``params``) run through the real system on a virtual clock (``run``): the HTTP app, the worker, the channel
adapters, with engagement coming back through the public callback endpoints. See docs/demo.md."""
