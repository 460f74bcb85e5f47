"""Evaluation: the paper's benchmarks in VLMEvalKit's formats, scored exactly as VLMEvalKit's own
code scores them without a judge (`scoring.score`), runs of a model or an OpenAI-compatible
endpoint with VLMEvalKit's MiniCPM-V prompts (`runner.run_benchmark`), and comparisons of runs.

The scorers are pure Python and import no torch; only a local model run does."""
