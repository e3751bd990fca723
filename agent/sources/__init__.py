"""Sources: what turns radios and readers into ``Observation``s and ``CardTap``s.

Each source pseudonymises at once (``agent.privacy``), counts and logs what
it drops, and survives its hardware going away and coming back.
"""
