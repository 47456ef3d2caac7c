"""The RL maths as pure tensor functions: advantages, policy and value losses, KL."""
