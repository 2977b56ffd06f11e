"""Knowledge generation: the reason -> reflect -> refine loop (loop.py), its prompts and parsing, the LLM backends,
the answer cache, and the Spark job that runs it part by part (job.py)."""


class KnowledgeError(Exception):
    """The job cannot start (missing inputs, an output folder from other settings); one line for the user."""
