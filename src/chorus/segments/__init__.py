"""segments: the rule language and its pure reference evaluator.

``rules`` parses and validates rules (JSON, or YAML in files) into immutable nodes; ``evaluate`` answers "is this
person in the segment at ``now``, and when can time alone change that" over plain data (``person``); ``windows``
and ``times`` are the small exact functions both rest on. No I/O here: storage, the change-feed consumer, the
incremental engine and the SQL compiler build on these modules.
"""
