"""Example reward plug-ins for rlreason (README, "Writing a reward"); tests/rewards/test_example_rewards.py runs them.

Name them in a recipe by file path or, with this folder on PYTHONPATH, as a module:

    reward:
      functions:
        - {name: math_verify}                                      # the verifier: reports `correct`
        - {name: examples/rewards/my_reward.py:concise, weight: 0.5, kwargs: {max_chars: 300}}
        - {name: my_reward:shortest_correct_bonus, weight: 0.2}    # PYTHONPATH=examples/rewards
"""

from rlreason.rewards import batched


def concise(*, response, ground_truth, num_carries=0, max_chars=200, **columns):
    """Right answer in few characters; `num_carries` is a column of the quickstart's dataset."""
    right = ground_truth is not None and f"{{{ground_truth}}}" in response  # the answer inside \boxed{...}
    score = float(right) - min(len(response) / max_chars, 1.0)
    return {"score": score, "right": float(right), "carries": float(num_carries)}  # extras logged too


@batched(per="group")
def shortest_correct_bonus(*, response, correct, **columns):
    """+1 for the shortest correct response of each prompt's group: a group reward sees lists.

    `correct` holds the verifier's verdicts (1.0, 0.0, or None where no verifier applied); naming it
    makes this reward run after math_verify.
    """
    right = [i for i, c in enumerate(correct) if c == 1.0]
    best = min(right, key=lambda i: len(response[i])) if right else None
    return [1.0 if i == best else 0.0 for i in range(len(response))]
