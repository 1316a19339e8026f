"""Refinement by reinforcement learning: adversarial imitation optimised with PPO on plain Ray actors.

ppo.py (pure math) - experience.py (rollout samples and their batches) - generation.py (sampling
with a KV cache) - reward.py (edit validity, custom rewards) - actors.py (rollout workers,
reference, discriminator, learner group) - loop.py (``secondthought rl``).
"""
