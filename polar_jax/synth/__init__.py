"""Synthesis of POLAR pre-training triplets: a policy pool (`pool`), prompts cut from a corpus
or read from an instruction file (`prompts`), and the resumable triplet writer (`synthesize`).
`from_config` turns a `configs/synth_*.py` file into those three."""
