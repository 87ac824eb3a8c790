"""Interactive refinement: clicks → prompts, the simulated user, and the session that applies
clicks to a predictor's segmentation (see ``README.md`` beside this file)."""
