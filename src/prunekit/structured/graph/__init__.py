"""The dependency-graph engine: record one forward pass (:mod:`.recorder`, :mod:`.trace`), move channel labels
through every torch call (:mod:`.rules`), read coupled groups (:mod:`.groups`), score them (:mod:`.importance`),
plan and check the removal (:mod:`.plan`, :mod:`.check`), remove (:mod:`.removal`) and report (:mod:`.report`).
It knows no model family: Hugging Face specifics reach the planner from :mod:`prunekit.structured.transformers`."""
