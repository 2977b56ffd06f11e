"""Training the actor and the reflector (the paper's Algorithm 1 and LoRA tuning): construction data from a teacher,
chat-format SFT sets, adapters."""
