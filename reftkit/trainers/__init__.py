"""Training: SFT (sft.py), the one step loop of the trainers that sample as they learn (stepwise.py), ReFT's
PPO update (reft.py), offline / online self-training (self_training.py), the outcome reward model
(reward_model.py), resumable checkpoints (checkpoints.py) and the plumbing they share (common.py).

Imports everything below: evaluation, rollout, models, data, reward, rl, config, runtime.
"""
