"""Score a new raw dump with a trained detector (``python -m stages.score``).

One module per job: :mod:`.frozen` loads what training froze (schema, normalisation statistics,
call graph, Drain3 miners, embeddings, threshold rule), :mod:`.features` builds the new dump's
grid features from it, :mod:`.stream` carries the state from one run to the next (context
steps, gap-fill carry, DSPOT), :mod:`.alarms` turns scores into alarm segments with their
contributors, :mod:`.drift` describes what the model has never seen, :mod:`.report` writes the
HTML page.
"""
