"""Refinement by reinforcement learning: adversarial imitation optimised with PPO on plain Ray actors.

Pure: ppo.py (PPO math, advantages), experience.py (rollout samples and their batches), reward.py (edit
validity, custom rewards), prompts.py (the prompt table). On Ray: placement.py (the placement group),
group.py (actor groups), actors.py (rollout workers, reference, discriminator, learners), driver.py
(``secondthought rl``). Sampling is the shared ``secondthought.decoding.policy``.
"""
