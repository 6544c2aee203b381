"""Reinforcement fine-tuning (RFT) of a policy with POLAR rewards against references:
rollouts, POLAR scoring, advantage estimators (GAE, group baseline), the PPO update, the loop."""
