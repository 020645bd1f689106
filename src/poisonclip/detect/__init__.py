"""Detection: which training samples are poisons? Registered detectors score every sample of a
dataset from its image and caption contents only (never keys, file names, the manifest or the
layout, as a real defender would), and the scores are measured against the poisoned folder's
manifest (``detect.api.detect``; ``poisonclip detect``). See docs/defenses.md."""
