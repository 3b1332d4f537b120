"""The car's own CAN bus: signal layouts (:mod:`.signals`), the sans-IO reader
(:mod:`.reader`), the exact energy meter (:mod:`.meter`) and their settings (:mod:`.config`)."""
