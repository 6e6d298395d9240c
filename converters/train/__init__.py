"""`edgekit train`: the resumable training sweep, one model's training, ensembles, options and the run folder."""
